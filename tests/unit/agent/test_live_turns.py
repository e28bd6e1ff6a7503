"""LiveTurns: followers see a turn's events from where they ask, a detached turn outlives its
followers, stops on cancel or at its deadline, and finished turns are forgotten after a while."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from chatplane.agent.live_turns import LiveTurns
from chatplane.agent.turn import Budget, TurnEvent, TurnRequest
from chatplane.common import errors
from chatplane.common.ids import new_id
from chatplane.v1 import resources_pb2


def turn(tenant: str = "t", user: str = "u") -> TurnRequest:
    return TurnRequest(tenant, user, new_id(), new_id(), new_id(), "hi", "")


def live_turns(linger: float = 60.0, max_finished: int = 10) -> LiveTurns:
    return LiveTurns(linger_seconds=linger, max_finished=max_finished, turn_timeout_seconds=30)


class Generation:
    """A turn whose deltas come when the test releases them; records how it ended."""

    def __init__(self, deltas: int) -> None:
        self.deltas = deltas
        self.release = asyncio.Semaphore(0)
        self.closed = asyncio.Event()
        self.completed = False

    async def __call__(self, request: TurnRequest, budget: Budget) -> AsyncGenerator[TurnEvent]:
        try:
            yield resources_pb2.TurnStarted(assistant_message_id=request.assistant_message_id)
            yield resources_pb2.Citation(source_id="doc")
            for sequence in range(1, self.deltas + 1):
                await self.release.acquire()
                yield resources_pb2.TextDelta(text=f"d{sequence} ", sequence=sequence)
            yield resources_pb2.Usage(output_tokens=self.deltas)
            yield resources_pb2.TurnDone(delta_count=self.deltas)
            self.completed = True
        finally:
            self.closed.set()


async def collect(events: AsyncGenerator[TurnEvent], count: int | None = None) -> list[TurnEvent]:
    seen: list[TurnEvent] = []
    async for event in events:
        seen.append(event)
        if count is not None and len(seen) == count:
            break
    await events.aclose()
    return seen


def kinds(events: list[TurnEvent]) -> list[str]:
    return [type(e).__name__ for e in events]


async def test_a_detached_turn_outlives_its_follower_and_a_resumer_gets_the_rest() -> None:
    turns = live_turns()
    generation = Generation(deltas=4)
    request = turn()
    live = turns.start_detached(request, generation, 30)
    generation.release.release()
    first = await collect(live.follow(0, resumed=False), count=3)  # started, citation, d1
    assert kinds(first) == ["TurnStarted", "Citation", "TextDelta"]

    for _ in range(3):
        generation.release.release()
    found = turns.find("t", "u", request.assistant_message_id)
    rest = await collect(found.follow(1, resumed=True))

    assert isinstance(rest[0], resources_pb2.TurnStarted) and rest[0].resumed
    assert not live.events[0].resumed  # the kept event is not changed
    assert [e.sequence for e in rest if isinstance(e, resources_pb2.TextDelta)] == [2, 3, 4]
    assert kinds(rest)[-2:] == ["Usage", "TurnDone"]
    assert "Citation" not in kinds(rest)  # they precede delta 1, which the resumer had
    assert generation.completed


async def test_follow_checks_after_sequence() -> None:
    turns = live_turns()
    generation = Generation(deltas=2)
    live = turns.start_detached(turn(), generation, 30)
    generation.release.release()
    await collect(live.follow(0, resumed=False), count=3)
    with pytest.raises(errors.InvalidArgument) as negative:
        await collect(live.follow(-1, resumed=True))
    assert negative.value.field == "after_sequence"
    with pytest.raises(errors.InvalidArgument):
        await collect(live.follow(2, resumed=True))  # one delta so far
    turns.cancel("t", "u", live.assistant_message_id)
    await asyncio.wait_for(generation.closed.wait(), 1)


async def test_only_the_owner_finds_or_cancels_a_turn() -> None:
    turns = live_turns()
    generation = Generation(deltas=1)
    request = turn()
    turns.start_detached(request, generation, 30)
    for tenant, user in (("t", "other"), ("other", "u")):
        with pytest.raises(errors.NotFound):
            turns.find(tenant, user, request.assistant_message_id)
        assert not turns.cancel(tenant, user, request.assistant_message_id)
    with pytest.raises(errors.NotFound):
        turns.find("t", "u", new_id())
    live = turns.find("t", "u", request.assistant_message_id)
    assert turns.cancel("t", "u", request.assistant_message_id)  # before it even ran
    assert live.task is not None
    await asyncio.gather(live.task, return_exceptions=True)
    assert live.finished and not generation.completed
    assert not turns.cancel("t", "u", request.assistant_message_id)  # ended already


async def test_a_cancelled_turn_ends_its_followers_without_done() -> None:
    turns = live_turns()
    generation = Generation(deltas=3)
    live = turns.start_detached(turn(), generation, 30)
    generation.release.release()
    follower = asyncio.ensure_future(collect(live.follow(0, resumed=False)))
    await asyncio.sleep(0)
    assert turns.cancel("t", "u", live.assistant_message_id)
    seen = await asyncio.wait_for(follower, 1)
    assert "TurnDone" not in kinds(seen) and live.finished and live.error is None


async def test_a_detached_turn_stops_at_its_deadline() -> None:
    turns = live_turns()
    generation = Generation(deltas=3)
    live = turns.start_detached(turn(), generation, 0.2)
    await asyncio.wait_for(generation.closed.wait(), 2)
    assert live.finished and isinstance(live.error, errors.DeadlineExceeded)


async def test_finished_turns_are_forgotten_after_the_linger_or_beyond_the_cap() -> None:
    turns = live_turns(linger=0.1, max_finished=1)
    first, second = turn(), turn()
    for request in (first, second):
        live = turns.open(request)
        live.publish(resources_pb2.TextDelta(text="x", sequence=1))
        turns.close(live)
    with pytest.raises(errors.NotFound):  # over the cap: the oldest went first
        turns.find("t", "u", first.assistant_message_id)
    assert turns.find("t", "u", second.assistant_message_id).deltas == 1

    async def forgotten() -> None:
        while True:
            try:
                turns.find("t", "u", second.assistant_message_id)
            except errors.NotFound:
                return
            await asyncio.sleep(0.02)

    await asyncio.wait_for(forgotten(), 2)
