"""Keeping the Persistence round trips before a turn's first token few: a continuing
conversation's handoff state (GetHandoff) is read at the same time as its BeginTurn, which
itself makes the turn's token reservation (token_quota.Admission); a refused reservation
releases a turn that was begun anyway (docs/chain-latency.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from chatplane.common.context import Principal
from chatplane.gateway.handoff import HandoffDesk, owner_of
from chatplane.gateway.token_quota import Admission
from chatplane.internal.v1 import turn_pb2
from chatplane.v1 import gateway_pb2, resources_pb2

Budget = Callable[[float], float]


def _retrieve(task: asyncio.Future[resources_pb2.HandoffStatus]) -> None:
    # A lookahead nobody needed (a replayed answer, a failed BeginTurn): its error, if any,
    # was reported by BeginTurn already.
    if not task.cancelled():
        task.exception()


class HandoffLookahead:
    """A conversation's handoff state, asked for before it is needed."""

    def __init__(self, task: asyncio.Future[resources_pb2.HandoffStatus] | None) -> None:
        self._task = task

    @classmethod
    def start(
        cls,
        desk: HandoffDesk | None,
        principal: Principal,
        request: gateway_pb2.ChatRequest,
        budget: Budget,
    ) -> HandoffLookahead:
        """Starts the read for a continuing conversation (a new one is with the bot)."""
        if desk is None or not request.conversation_id:
            return cls(None)
        task = asyncio.ensure_future(
            desk.state(owner_of(principal), request.conversation_id, budget)
        )
        task.add_done_callback(_retrieve)
        return cls(task)

    async def state(self) -> resources_pb2.HandoffStatus | None:
        """The state read ahead (its error raised here), None when none was read."""
        return None if self._task is None else await self._task


async def admitted(
    admission: Admission,
    begin: turn_pb2.BeginTurnResponse,
    release: Callable[[], Awaitable[None]],
) -> None:
    """Waits for the turn's reservation. When it is refused and the turn was begun anyway (a
    regenerate or edit, or a Persistence that predates BeginTurnRequest.reserve_quota), the
    turn is released (its lease ends now, nothing was recorded) before QuotaExceeded (or the
    separate call's error) is raised."""
    try:
        await admission()
    except Exception:  # refused, or the separate ReserveQuota call failed
        if begin.owner:
            await release()
        raise
