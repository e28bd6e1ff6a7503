"""The recent turns of a turn's prompt, read from the system of record (Persistence's
TurnService.GetRecentMessages): the newest messages of the branch the answer follows, ending at
the turn's parent. A previous turn whose records are on the message log but not stored yet is
waited for (bounded), so a follow-up sent the moment `done` arrived still sees it
(read-your-writes, docs/decisions.md); recall from memory may lag, this window may not."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from chatplane.agent.llm.base import HistoryLine, Speaker
from chatplane.internal.v1 import turn_pb2
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import admin_resources_pb2, resources_pb2

_log = logging.getLogger(__name__)

_SPEAKERS = {resources_pb2.ROLE_USER: Speaker.USER, resources_pb2.ROLE_ASSISTANT: Speaker.ASSISTANT}
# An operator's reply (docs/handoff.md) is the conversation's other side, as Persistence
# stores it.
_SPEAKERS[resources_pb2.ROLE_OPERATOR] = Speaker.ASSISTANT


@dataclass(frozen=True, slots=True)
class RecentWindow:
    """The branch's newest messages, oldest first, with their ids; `degraded` when they could
    not be read (the answer goes on without them)."""

    history: Sequence[HistoryLine]
    message_ids: Sequence[str]
    degraded: bool = False


NO_WINDOW = RecentWindow(history=(), message_ids=())


class RecentTurns:
    """Reads recent windows from Persistence with a deadline on every call."""

    def __init__(self, persistence: PersistenceClient) -> None:
        self._persistence = persistence

    async def window(
        self,
        *,
        tenant_id: str,
        user_id: str,
        conversation_id: str,
        leaf_message_id: str,
        limit: int,
        wait_seconds: float,
        timeout: float,
    ) -> RecentWindow:
        """The newest `limit` messages of the branch ending at `leaf_message_id` (the turn's
        parent; "" for a first message: none)."""
        if not leaf_message_id or limit <= 0:
            return NO_WINDOW
        request = turn_pb2.GetRecentMessagesRequest(
            owner=admin_resources_pb2.Owner(tenant_id=tenant_id, user_id=user_id),
            conversation_id=conversation_id,
            leaf_message_id=leaf_message_id,
            limit=min(limit, 500),
            wait_ms=round(min(wait_seconds, timeout) * 1000),
        )
        try:
            response = await self._persistence.turns.GetRecentMessages(request, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            _log.warning(
                "recent turns not read; answering without them", extra={"code": error.code().name}
            )
            return RecentWindow(history=(), message_ids=(), degraded=True)
        if response.incomplete:
            # A turn still running when this one began (two messages sent at once): its
            # messages are not in the store yet and are left out, as they would be anyway.
            _log.info("recent turns read without a running turn's messages")
        kept = [m for m in response.messages if m.role in _SPEAKERS]
        return RecentWindow(
            history=[HistoryLine(speaker=_SPEAKERS[m.role], text=m.text) for m in kept],
            message_ids=[m.message_id for m in kept],
        )
