"""The audit recorder: events are appended in order and in batches; a failed append is tried
again with the same events; under a flood the queue stays bounded and the loss is recorded."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from chatplane.audit.chain import AuditEvent
from chatplane.audit.recorder import DROPPED_ACTION, AuditRecorder, AuditRejected


def event(number: int) -> AuditEvent:
    return AuditEvent("anonymous", "", "auth.failure", f"attempt/{number}", "failure")


class Sink:
    """Keeps what it is given; can fail the next appends, or hold them until released."""

    def __init__(self) -> None:
        self.batches: list[list[AuditEvent]] = []
        self.fail_next = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def append(self, events: Sequence[AuditEvent]) -> None:
        await self.gate.wait()
        if self.fail_next:
            self.fail_next -= 1
            raise OSError("store down")
        self.batches.append(list(events))

    @property
    def events(self) -> list[AuditEvent]:
        return [e for batch in self.batches for e in batch]


async def test_events_are_batched_in_order() -> None:
    sink = Sink()
    recorder = AuditRecorder(sink, max_batch=10, flush_seconds=0.05, max_pending=100)
    recorder.start()
    for number in range(25):
        recorder.record(event(number))
    assert await recorder.flush()
    assert [e.object for e in sink.events] == [f"attempt/{n}" for n in range(25)]
    assert all(len(batch) <= 10 for batch in sink.batches)
    assert len(sink.batches) <= 4
    assert all(e.event_time is not None for e in sink.events)
    await recorder.stop()


async def test_a_failed_append_is_retried_with_the_same_events() -> None:
    sink = Sink()
    sink.fail_next = 2
    recorder = AuditRecorder(sink, max_batch=10, flush_seconds=0.01, retry_seconds=0.01)
    recorder.start()
    for number in range(5):
        recorder.record(event(number))
    assert await recorder.flush()
    assert [e.object for e in sink.events] == [f"attempt/{n}" for n in range(5)]
    await recorder.stop()


async def test_a_flood_is_bounded_and_its_loss_recorded() -> None:
    sink = Sink()
    sink.gate.clear()  # the store is slow: nothing gets through for now
    recorder = AuditRecorder(sink, max_batch=50, flush_seconds=0.01, max_pending=200)
    recorder.start()
    for number in range(10_000):
        recorder.record(event(number))
    await asyncio.sleep(0.05)
    # At most the queue (and the one batch in flight, which is part of it) is held.
    assert recorder.dropped == 10_000 - 200
    sink.gate.set()
    assert await recorder.flush()
    kept = [e for e in sink.events if e.action != DROPPED_ACTION]
    assert [e.object for e in kept] == [f"attempt/{n}" for n in range(200)]
    (lost,) = [e for e in sink.events if e.action == DROPPED_ACTION]
    assert lost.detail.startswith("9800 event(s) not recorded")
    assert recorder.dropped == 0
    await recorder.stop()


class Picky(Sink):
    """Refuses any batch holding an event whose object is "poison"."""

    async def append(self, events: Sequence[AuditEvent]) -> None:
        if any(e.object == "poison" for e in events):
            raise AuditRejected("refused")
        await super().append(events)


async def test_a_refused_event_does_not_block_the_rest() -> None:
    sink = Picky()
    recorder = AuditRecorder(sink, max_batch=10, flush_seconds=0.01, max_pending=100)
    recorder.start()
    for number in range(3):
        recorder.record(event(number))
    recorder.record(AuditEvent("a", "", "x", "poison", "failure"))
    recorder.record(event(3))
    assert await recorder.flush()
    recorder.record(event(4))
    assert await recorder.flush()
    objects = [e.object for e in sink.events]
    assert objects[:4] == ["attempt/0", "attempt/1", "attempt/2", "attempt/3"]
    (lost,) = [e for e in sink.events if e.action == DROPPED_ACTION]
    assert lost.detail.startswith("1 event(s)")
    assert "attempt/4" in objects
    await recorder.stop()
