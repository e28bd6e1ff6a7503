"""MemoryService servicer: proto ⇄ ConversationalMemory."""

from __future__ import annotations

from typing import Any

import grpc

from chatplane.common import errors
from chatplane.memory.conversational_memory import ConversationalMemory
from chatplane.memory.index.base import ItemKind, RecalledItem
from chatplane.memory.metrics import RECALL_DURATION, REMEMBER_DURATION
from chatplane.memory.remember_request import ROLE_NAMES, remembered_messages
from chatplane.v1 import memory_pb2, memory_pb2_grpc, resources_pb2

_ROLES = {name: role for role, name in ROLE_NAMES.items()}
_SNIPPET_CHARS = 200


def _recalled(found: RecalledItem) -> memory_pb2.RecalledItem:
    item = found.item
    is_document = item.kind is ItemKind.DOCUMENT
    return memory_pb2.RecalledItem(
        citation=resources_pb2.Citation(
            kind=resources_pb2.CITATION_KIND_DOCUMENT
            if is_document
            else resources_pb2.CITATION_KIND_TURN,
            source_id=item.item_id,
            title=item.source if is_document else "earlier conversation",
            snippet=item.text[:_SNIPPET_CHARS],
            score=found.score,
        ),
        text=item.text,
        conversation_id=item.conversation_id,
        role=_ROLES.get(item.role, resources_pb2.ROLE_UNSPECIFIED),
    )


class MemoryServicer(memory_pb2_grpc.MemoryServiceServicer):
    """MemoryService over ConversationalMemory."""

    def __init__(self, memory: ConversationalMemory) -> None:
        self._memory = memory

    async def Remember(
        self, request: memory_pb2.RememberRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> memory_pb2.RememberResponse:
        if any(m.role not in ROLE_NAMES for m in request.messages):
            raise errors.InvalidArgument("messages.role", "must be ROLE_USER or ROLE_ASSISTANT")
        with REMEMBER_DURATION.time():
            count = await self._memory.remember(
                request.tenant_id,
                request.user_id,
                request.conversation_id,
                remembered_messages(request),
            )
        return memory_pb2.RememberResponse(remembered_count=count)

    async def Recall(
        self, request: memory_pb2.RecallRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> memory_pb2.RecallResponse:
        with RECALL_DURATION.time():
            recall = await self._memory.recall(
                request.tenant_id,
                request.user_id,
                request.conversation_id,
                request.query,
                request.recent_limit,
                request.top_k,
            )
        return memory_pb2.RecallResponse(
            recent=[
                memory_pb2.MemoryMessage(
                    message_id=item.item_id,
                    role=_ROLES.get(item.role, resources_pb2.ROLE_UNSPECIFIED),
                    text=item.text,
                    create_time_unix_ms=item.created_at_ms,
                )
                for item in recall.recent
            ],
            items=[_recalled(found) for found in recall.relevant],
        )

    async def Forget(
        self, request: memory_pb2.ForgetRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> memory_pb2.ForgetResponse:
        count = await self._memory.forget(
            request.tenant_id, request.user_id, request.conversation_id
        )
        return memory_pb2.ForgetResponse(forgotten_count=count)
