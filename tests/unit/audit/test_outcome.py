"""`audited`: exactly one record per wrapped call, with its outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from chatplane import audit
from chatplane.audit.chain import AuditEvent
from chatplane.audit.outcome import audited
from chatplane.common import errors


class ListSink:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def append(self, events: Sequence[AuditEvent]) -> None:
        self.events.extend(events)


async def run(body: type[BaseException] | None, detail: str = "") -> AuditEvent:
    sink = ListSink()
    recorder = audit.AuditRecorder(sink, flush_seconds=0.01)
    recorder.start()
    audit.install(recorder)
    try:
        with audited(
            audit.OPERATOR_READ, actor="user:sam", tenant_id="acme", object="conversation/1"
        ) as note:
            note.detail = detail
            if body is errors.PermissionDenied:
                raise errors.PermissionDenied("this call needs the 'operator' role")
            if body is errors.NotFound:
                raise errors.NotFound("conversation not found")
            if body is not None:
                raise body()
    except BaseException:
        pass
    finally:
        await recorder.stop()
        audit.install(None)
    (event,) = sink.events
    return event


async def test_success_failure_denied_and_cancelled_are_one_record_each() -> None:
    ok = await run(None, "messages=3")
    assert (ok.outcome, ok.detail, ok.object) == ("success", "messages=3", "conversation/1")
    missing = await run(errors.NotFound, "messages=0")
    assert (missing.outcome, missing.detail) == (
        "failure",
        "messages=0; NotFound: conversation not found",
    )
    denied = await run(errors.PermissionDenied)
    assert (denied.outcome, denied.detail) == ("denied", "this call needs the 'operator' role")
    cancelled = await run(asyncio.CancelledError)
    assert (cancelled.outcome, cancelled.detail) == ("failure", "cancelled by the caller")


@pytest.mark.parametrize("error", [RuntimeError, KeyError])
async def test_other_errors_name_their_kind_only(error: type[Exception]) -> None:
    event = await run(error)
    assert (event.outcome, event.detail) == ("failure", error.__name__)
