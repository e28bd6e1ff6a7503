"""The Agent's view of MemoryService: recall context before an answer (Memory indexes the
answer later, from the message log). Memory is an enhancement: when it fails the turn goes on
without it (degraded)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from chatplane.agent.llm.base import ContextPassage, HistoryLine
from chatplane.internal.v1 import memory_pb2, memory_pb2_grpc
from chatplane.v1 import resources_pb2

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Recollection:
    """What memory returned for a turn."""

    history: Sequence[HistoryLine]
    passages: Sequence[ContextPassage]
    citations: Sequence[resources_pb2.Citation]
    degraded: bool
    # The message id of each history line, and the conversation each passage was recalled
    # from ("" for documents): what a branch of a conversation tree is filtered by.
    history_ids: Sequence[str] = ()
    passage_conversations: Sequence[str] = ()


class MemoryClient:
    """Calls MemoryService with a deadline on every call."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = memory_pb2_grpc.MemoryServiceStub(channel)

    async def recall(
        self,
        *,
        tenant_id: str,
        user_id: str,
        conversation_id: str,
        query: str,
        top_k: int,
        timeout: float,
    ) -> Recollection:
        """The relevant items (no recent turns: the Agent reads those from Persistence,
        agent/recent_turns.py); an empty, degraded recollection if memory fails."""
        request = memory_pb2.RecallRequest(
            tenant_id=tenant_id,
            user_id=user_id,
            conversation_id=conversation_id,
            query=query,
            top_k=top_k,
        )
        try:
            response = await self._stub.Recall(request, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            _log.warning(
                "memory recall failed; answering without it", extra={"code": error.code().name}
            )
            return Recollection(history=(), passages=(), citations=(), degraded=True)
        passages = [
            ContextPassage(source_id=i.citation.source_id, title=i.citation.title, text=i.text)
            for i in response.items
        ]
        return Recollection(
            history=(),
            passages=passages,
            citations=[i.citation for i in response.items],
            degraded=False,
            passage_conversations=[i.conversation_id for i in response.items],
        )
