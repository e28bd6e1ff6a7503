"""Persistence's calls to MemoryService for erasure and retention: a user's turns, or one
expired conversation, forgotten by the memory index (docs/privacy.md)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from chatplane.common import errors
from chatplane.internal.v1 import memory_pb2, memory_pb2_grpc


class MemoryServiceEraser:
    """MemoryEraser (erasure) and ConversationForgetter (retention) over MemoryService."""

    def __init__(self, memory: memory_pb2_grpc.MemoryServiceAsyncStub, timeout: float) -> None:
        self._memory = memory
        self._timeout = timeout

    async def erase_user_memory(
        self, tenant_id: str, user_id: str, conversation_ids: Sequence[str]
    ) -> int:
        try:
            response = await self._memory.EraseUserMemory(
                memory_pb2.EraseUserMemoryRequest(
                    tenant_id=tenant_id, user_id=user_id, conversation_ids=conversation_ids
                ),
                # One delete per conversation: allow for many.
                timeout=self._timeout * (1 + len(conversation_ids) / 50),
            )
        except grpc.aio.AioRpcError as error:
            raise errors.Unavailable(f"memory erasure failed: {error.code().name}") from error
        return int(response.erased_count)

    async def forget_conversation(self, tenant_id: str, user_id: str, conversation_id: str) -> int:
        try:
            response = await self._memory.Forget(
                memory_pb2.ForgetRequest(
                    tenant_id=tenant_id, user_id=user_id, conversation_id=conversation_id
                ),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            raise errors.Unavailable(f"memory forget failed: {error.code().name}") from error
        return int(response.forgotten_count)
