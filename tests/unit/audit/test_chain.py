"""The audit chain's canonical form (pinned: a change would break every stored chain) and its
verification of edited, removed, reordered and truncated chains."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime

from chatplane.audit.chain import (
    EMPTY_HEAD,
    GENESIS_HASH,
    AuditEvent,
    AuditRecord,
    canonical_bytes,
    extend,
    head_after,
    verify,
)

NOW = datetime(2026, 11, 24, 8, 0, 0, 123456, tzinfo=UTC)


def event(number: int) -> AuditEvent:
    return AuditEvent(
        actor="user:ä",
        tenant_id="acme",
        action="api_key.revoke",
        object=f"api_key/{number}",
        outcome="success",
        detail='quote " and \n newline',
    )


def test_canonical_form_is_pinned() -> None:
    timed = replace(event(1), event_time=NOW, source="ipv4:127.0.0.1:5", request_id="r")
    assert (
        canonical_bytes(7, timed)
        == (
            '{"action":"api_key.revoke","actor":"user:ä","detail":"quote \\" and \\n newline",'
            '"object":"api_key/1","outcome":"success","request_id":"r","seq":7,'
            '"source":"ipv4:127.0.0.1:5","tenant":"acme","time_us":1795507200123456,"v":1}'
        ).encode()
    )
    (record,) = extend(EMPTY_HEAD, [timed], NOW)
    assert record.prev_hash == GENESIS_HASH
    assert record.hash == hashlib.sha256(GENESIS_HASH + canonical_bytes(1, timed)).digest()


def test_extend_chains_and_bounds_fields() -> None:
    long = replace(event(0), detail="x" * 5000)
    records = extend(EMPTY_HEAD, [long, event(1), event(2)], NOW)
    assert [r.seq for r in records] == [1, 2, 3]
    assert records[1].prev_hash == records[0].hash
    assert len(records[0].event.detail) == 512
    assert all(r.event.event_time == NOW for r in records)
    head = head_after(EMPTY_HEAD, records)
    more = extend(head, [event(3)], NOW)
    assert more[0].seq == 4 and more[0].prev_hash == head.hash
    assert verify(records + more, head_after(head, more)).ok


def chain(count: int) -> tuple[list[AuditRecord], object]:
    records = extend(EMPTY_HEAD, [event(i) for i in range(count)], NOW)
    return records, head_after(EMPTY_HEAD, records)


def test_every_single_tampering_is_named() -> None:
    records, head = chain(5)
    assert verify(records, head).ok  # type: ignore[arg-type]
    edited = list(records)
    edited[2] = replace(records[2], event=replace(records[2].event, outcome="failure"))
    verdict = verify(edited, head)  # type: ignore[arg-type]
    assert (verdict.ok, verdict.bad_seq) == (False, 3)
    assert "edited" in verdict.problem
    removed = records[:1] + records[2:]
    assert verify(removed, head).bad_seq == 3  # type: ignore[arg-type]
    swapped = list(records)
    swapped[1], swapped[2] = (
        replace(records[2], seq=2),
        replace(records[1], seq=3),
    )
    assert verify(swapped, head).bad_seq == 2  # type: ignore[arg-type]
    truncated = verify(records[:-1], head)  # type: ignore[arg-type]
    assert (truncated.ok, truncated.bad_seq) == (False, 5)
    assert "removed from the end" in truncated.problem
    assert verify([], EMPTY_HEAD).ok


def test_nul_and_lone_surrogates_are_made_storable() -> None:
    hostile = replace(event(0), detail="a\x00b", actor="\udc80x")
    (record,) = extend(EMPTY_HEAD, [hostile], NOW)
    assert record.event.detail == "a\ufffdb" and record.event.actor == "?x"
    assert verify([record], head_after(EMPTY_HEAD, [record])).ok
