"""The hash chain of the audit log: the canonical serialization of a record, its hash, the
records a batch of events becomes, and the verification that finds the first bad record.

Each record's hash is SHA-256 over the previous record's hash (32 bytes; 32 zero bytes before
the first record) followed by the record's canonical serialization: the UTF-8 bytes of a JSON
object with exactly the keys below, sorted, no whitespace (separators "," and ":"), strings as
JSON strings without ASCII escaping, integers as integers. Only strings and integers occur, so
this is also the record's RFC 8785 (JCS) form. Editing, removing or reordering any record
changes a hash that a later record (or the chain's head) still names."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Final

from chatplane.common.timestamps import from_micros, to_micros

GENESIS_HASH: Final = bytes(32)
"""The prev_hash of the first record, and the head hash of an empty chain."""

CANONICAL_VERSION: Final = 1
"""The `v` key of the canonical form; a new form gets a new number (verify knows each)."""

MAX_FIELD_CHARS: Final = 512
"""Longer field values are cut to this many characters before they are chained."""


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What happened: who (`actor`), in which tenant, did what (`action`) to what (`object`),
    with what `outcome`; `detail` is a short machine-made reason, never message content."""

    actor: str
    tenant_id: str
    action: str
    object: str
    outcome: str
    detail: str = ""
    source: str = ""
    request_id: str = ""
    # When it happened; None: when it is appended.
    event_time: datetime | None = None

    def bounded(self) -> AuditEvent:
        """The event as it is chained: every text field cut to MAX_FIELD_CHARS, NUL characters
        (which PostgreSQL text cannot hold) replaced by U+FFFD, lone surrogates by `?`."""
        return replace(
            self,
            actor=_storable(self.actor),
            tenant_id=_storable(self.tenant_id),
            action=_storable(self.action),
            object=_storable(self.object),
            outcome=_storable(self.outcome),
            detail=_storable(self.detail),
            source=_storable(self.source),
            request_id=_storable(self.request_id),
        )


def _storable(value: str) -> str:
    cut = value[:MAX_FIELD_CHARS].replace("\x00", "\ufffd")
    # Lone surrogates (never in a decoded gRPC string, possible in Python text) have no UTF-8.
    return cut.encode("utf-8", "replace").decode("utf-8")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """An event at its place in the chain (`event.event_time` is always set)."""

    seq: int
    event: AuditEvent
    prev_hash: bytes
    hash: bytes


@dataclass(frozen=True, slots=True)
class AuditHead:
    """The newest record's seq and hash (0 and GENESIS_HASH for an empty chain)."""

    seq: int
    hash: bytes


EMPTY_HEAD: Final = AuditHead(0, GENESIS_HASH)


def canonical_bytes(seq: int, event: AuditEvent) -> bytes:
    """The record's canonical serialization (see the module docstring)."""
    if event.event_time is None:
        raise ValueError("a chained event has a time")
    fields: dict[str, str | int] = {
        "v": CANONICAL_VERSION,
        "seq": seq,
        "time_us": to_micros(event.event_time),
        "actor": event.actor,
        "tenant": event.tenant_id,
        "action": event.action,
        "object": event.object,
        "outcome": event.outcome,
        "detail": event.detail,
        "source": event.source,
        "request_id": event.request_id,
    }
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # surrogatepass: a lone surrogate (never valid in gRPC strings) still has one encoding.
    return text.encode("utf-8", "surrogatepass")


def record_hash(prev_hash: bytes, seq: int, event: AuditEvent) -> bytes:
    """SHA-256 of `prev_hash` followed by the record's canonical serialization."""
    return hashlib.sha256(prev_hash + canonical_bytes(seq, event)).digest()


def extend(head: AuditHead, events: Sequence[AuditEvent], now: datetime) -> list[AuditRecord]:
    """The records that `events` become after `head`, in order (events without a time get
    `now`; fields are bounded)."""
    records: list[AuditRecord] = []
    seq, prev = head.seq, head.hash
    for event in events:
        timed = event.bounded()
        if timed.event_time is None:
            timed = replace(timed, event_time=now)
        # Times are stored as whole microseconds; chain exactly what is stored.
        timed = replace(timed, event_time=from_micros(to_micros(timed.event_time or now)))
        seq += 1
        digest = record_hash(prev, seq, timed)
        records.append(AuditRecord(seq, timed, prev, digest))
        prev = digest
    return records


def head_after(head: AuditHead, records: Sequence[AuditRecord]) -> AuditHead:
    """The head once `records` (from `extend(head, ...)`) are appended."""
    return AuditHead(records[-1].seq, records[-1].hash) if records else head


@dataclass(frozen=True, slots=True)
class Verdict:
    """The result of walking a chain: `ok`, how many records were checked, and for a broken
    chain the seq of the first bad record (0: the head) and what is wrong with it."""

    ok: bool
    checked: int
    bad_seq: int = 0
    problem: str = ""


class ChainVerifier:
    """Walks records in seq order (fed page by page) and stops at the first bad one."""

    def __init__(self) -> None:
        self._expected_seq = 1
        self._prev_hash = GENESIS_HASH
        self._checked = 0
        self.verdict: Verdict | None = None

    def feed(self, records: Iterable[AuditRecord]) -> bool:
        """Checks the next records; False once a bad one was found (see `verdict`)."""
        if self.verdict is not None:
            return False
        for record in records:
            problem = self._problem(record)
            if problem:
                self.verdict = Verdict(False, self._checked, record.seq, problem)
                return False
            self._checked += 1
            self._expected_seq = record.seq + 1
            self._prev_hash = record.hash
        return True

    def _problem(self, record: AuditRecord) -> str:
        if record.seq != self._expected_seq:
            return (
                f"expected record {self._expected_seq} here, found {record.seq}"
                " (a record was removed or moved)"
            )
        if record.prev_hash != self._prev_hash:
            return (
                f"its prev_hash is not the hash of record {record.seq - 1}"
                " (a record before it was removed, reordered or edited)"
            )
        if record.hash != record_hash(record.prev_hash, record.seq, record.event):
            return "its hash does not match its content (the record was edited)"
        return ""

    def finish(self, head: AuditHead) -> Verdict:
        """The verdict after the last record, checked against the stored head."""
        if self.verdict is not None:
            return self.verdict
        last_seq = self._expected_seq - 1
        if head.seq != last_seq or head.hash != self._prev_hash:
            self.verdict = Verdict(
                False,
                self._checked,
                last_seq + 1 if head.seq > last_seq else 0,
                f"the chain ends at record {last_seq} but its head names record {head.seq}"
                + (
                    " (records were removed from the end)"
                    if head.seq > last_seq
                    else " with another hash (the head or the last record was edited)"
                ),
            )
        else:
            self.verdict = Verdict(True, self._checked)
        return self.verdict


def verify(records: Iterable[AuditRecord], head: AuditHead) -> Verdict:
    """Walks the whole chain at once (see ChainVerifier)."""
    verifier = ChainVerifier()
    verifier.feed(records)
    return verifier.finish(head)
