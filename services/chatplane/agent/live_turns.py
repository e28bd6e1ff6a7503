"""The turns an Agent is generating, with their events kept for ResumeChat: a client that lost
its stream follows the same generation again from the delta it last received. A resumable turn
runs detached from the call that started it, so losing that call does not stop it
(docs/resume.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field

from chatplane.agent.turn import Budget, TurnEvent, TurnRequest
from chatplane.common import errors
from chatplane.v1 import resources_pb2

_log = logging.getLogger(__name__)

# Keep a little of the turn's time for answering after a downstream call returns.
_MARGIN_SECONDS = 0.05

# Runs one turn: the runner's `run`.
Generation = Callable[[TurnRequest, Budget], AsyncGenerator[TurnEvent]]


@dataclass(eq=False, slots=True)
class LiveTurn:
    """One turn's events so far. `finished` once the generation ended, with `done` or not
    (`error` says why not, for the call that started it)."""

    tenant_id: str
    user_id: str
    assistant_message_id: str
    events: list[TurnEvent] = field(default_factory=list)
    deltas: int = 0
    finished: bool = False
    error: BaseException | None = None
    # The detached generation of a resumable turn (None: the turn runs inside its call).
    task: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    # Followers waiting for events: without any, publishing wakes no one (the common case).
    _followers: int = 0

    def publish(self, event: TurnEvent) -> None:
        """Keeps an event and wakes the followers."""
        self.events.append(event)
        if isinstance(event, resources_pb2.TextDelta):
            self.deltas += 1
        self._wake()

    def finish(self, error: BaseException | None = None) -> None:
        """The generation ended; followers get what is left, then their stream ends."""
        self.finished = True
        self.error = error
        self._wake()

    def _wake(self) -> None:
        if self._followers:
            self._changed.set()
            self._changed = asyncio.Event()

    async def follow(self, after_sequence: int, *, resumed: bool) -> AsyncIterator[TurnEvent]:
        """The turn's events from the start, with the deltas up to `after_sequence` (and the
        citations, which precede the first delta, unless it is 0) left out. `started` is
        marked `resumed` for a resumer. Ends when the generation ends."""
        if after_sequence < 0:
            raise errors.InvalidArgument("after_sequence", "must not be negative")
        if after_sequence > self.deltas:
            raise errors.InvalidArgument(
                "after_sequence", f"the answer has {self.deltas} deltas so far"
            )
        self._followers += 1
        try:
            index = 0
            while True:
                changed = self._changed
                while index < len(self.events):
                    event = self.events[index]
                    index += 1
                    if _wanted(event, after_sequence):
                        yield _resumed(event) if resumed else event
                if self.finished:
                    return
                await changed.wait()
        finally:
            self._followers -= 1


def _wanted(event: TurnEvent, after_sequence: int) -> bool:
    """Whether a resumer after `after_sequence` gets the event: not the deltas it has, nor
    the citations (they come before delta 1) unless it has none."""
    if isinstance(event, resources_pb2.Citation):
        return after_sequence == 0
    if isinstance(event, resources_pb2.TextDelta):
        return event.sequence > after_sequence
    return True


def _resumed(event: TurnEvent) -> TurnEvent:
    """`started` marked as the start of a resumed stream (a copy: the kept one is shared)."""
    if not isinstance(event, resources_pb2.TurnStarted):
        return event
    copy = resources_pb2.TurnStarted()
    copy.CopyFrom(event)
    copy.resumed = True
    return copy


class LiveTurns:
    """The live (and recently finished) turns of one Agent process, by assistant message id."""

    def __init__(
        self, *, linger_seconds: float, max_finished: int, turn_timeout_seconds: float
    ) -> None:
        # A resumable turn's time limit when its call has no deadline.
        self.turn_timeout_seconds = turn_timeout_seconds
        self._linger = linger_seconds
        self._max_finished = max_finished
        self._turns: dict[str, LiveTurn] = {}
        # Finished turns still kept, oldest first.
        self._finished: OrderedDict[str, LiveTurn] = OrderedDict()
        self._detached: set[asyncio.Task[None]] = set()

    def open(self, turn: TurnRequest) -> LiveTurn:
        """Registers a turn about to be generated inside its call."""
        live = LiveTurn(turn.tenant_id, turn.user_id, turn.assistant_message_id)
        self._turns[turn.assistant_message_id] = live
        return live

    def close(self, live: LiveTurn, error: BaseException | None = None) -> None:
        """The turn's generation ended: keep its events a while for resumers, then forget."""
        live.finish(error)
        if self._turns.get(live.assistant_message_id) is not live:
            return
        self._finished[live.assistant_message_id] = live
        while len(self._finished) > self._max_finished:
            self._forget(next(iter(self._finished)))
        asyncio.get_running_loop().call_later(
            self._linger, self._forget, live.assistant_message_id, live
        )

    def _forget(self, message_id: str, live: LiveTurn | None = None) -> None:
        kept = self._finished.get(message_id)
        if kept is None or (live is not None and kept is not live):
            return
        del self._finished[message_id]
        if self._turns.get(message_id) is kept:
            del self._turns[message_id]

    def start_detached(
        self, turn: TurnRequest, generation: Generation, timeout_seconds: float
    ) -> LiveTurn:
        """Starts a resumable turn as its own task, bounded by `timeout_seconds`: it runs to its
        end whether or not anyone follows it."""
        live = self.open(turn)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_seconds

        def budget(cap: float) -> float:
            remaining = deadline - loop.time() - _MARGIN_SECONDS
            if remaining <= 0:
                raise errors.DeadlineExceeded("the turn's deadline passed")
            return min(cap, remaining)

        async def generate() -> None:
            error: BaseException | None = None
            try:
                async with asyncio.timeout_at(deadline):
                    events = generation(turn, budget)
                    async with contextlib.aclosing(events):
                        async for event in events:
                            live.publish(event)
            except TimeoutError:
                error = errors.DeadlineExceeded("the turn's deadline passed")
            except asyncio.CancelledError:
                # Stopped by CancelGenerate or at shutdown: the partial answer is recorded as
                # interrupted, and every follower's stream ends without `done`.
                self.close(live)
                raise
            except Exception as failure:
                if not isinstance(failure, errors.ChatplaneError):
                    _log.exception("a detached turn failed")
                error = failure
            self.close(live, error)

        live.task = asyncio.create_task(generate(), name=f"turn {turn.assistant_message_id}")
        self._detached.add(live.task)
        live.task.add_done_callback(self._detached.discard)
        live.task.add_done_callback(lambda _: self._closed_anyway(live))
        return live

    def _closed_anyway(self, live: LiveTurn) -> None:
        # A task cancelled before it ever ran never reaches its own clean-up.
        if not live.finished:
            self.close(live)

    def find(self, tenant_id: str, user_id: str, assistant_message_id: str) -> LiveTurn:
        """The owner's live or recently finished turn; NotFound for anything else."""
        live = self._turns.get(assistant_message_id)
        if live is None or (live.tenant_id, live.user_id) != (tenant_id, user_id):
            raise errors.NotFound("no live answer for this message")
        return live

    def cancel(self, tenant_id: str, user_id: str, assistant_message_id: str) -> bool:
        """Stops the owner's detached turn if it is still generating; False otherwise."""
        try:
            live = self.find(tenant_id, user_id, assistant_message_id)
        except errors.NotFound:
            return False
        if live.task is None or live.task.done():
            return False
        live.task.cancel()
        return True

    async def stop(self) -> None:
        """At shutdown: stops the detached turns (each records its partial answer)."""
        tasks = list(self._detached)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
