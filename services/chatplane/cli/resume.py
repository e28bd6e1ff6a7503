"""The CLI's side of resume: continue an answer whose stream dropped (ResumeChat after the last
delta received, a few times), and stop an answer's generation (CancelChat), since a resumable
answer no longer stops when its stream does (docs/resume.md)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import grpc

from chatplane.v1 import gateway_pb2, gateway_pb2_grpc

# Codes of a lost stream worth resuming: the connection (or a hop) went away.
RESUMABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL})
RESUME_ATTEMPTS = 3
_BACKOFF_SECONDS = 0.5


async def resume_stream(
    stub: gateway_pb2_grpc.GatewayServiceAsyncStub,
    metadata: tuple[tuple[str, str], ...],
    message_id: str,
    last_sequence: Callable[[], int],
    apply: Callable[[gateway_pb2.ResumeChatResponse], None],
    *,
    timeout: float,
) -> None:
    """Streams the rest of the answer into `apply`, resuming again after a dropped stream (up
    to RESUME_ATTEMPTS calls); the last failure is raised."""
    for attempt in range(RESUME_ATTEMPTS):
        request = gateway_pb2.ResumeChatRequest(
            message_id=message_id, after_sequence=last_sequence()
        )
        try:
            # wait_for_ready: after a dropped connection the channel may still be reconnecting.
            call = stub.ResumeChat(request, metadata=metadata, timeout=timeout, wait_for_ready=True)
            async for event in call:
                apply(event)
            return
        except grpc.aio.AioRpcError as error:
            if error.code() not in RESUMABLE_CODES or attempt == RESUME_ATTEMPTS - 1:
                raise
        await asyncio.sleep(_BACKOFF_SECONDS * (attempt + 1))


async def cancel_generation(
    stub: gateway_pb2_grpc.GatewayServiceAsyncStub,
    metadata: tuple[tuple[str, str], ...],
    message_id: str,
) -> None:
    """Stops the answer's generation (best effort: it ends by its deadline anyway)."""
    with contextlib.suppress(grpc.aio.AioRpcError):
        await stub.CancelChat(
            gateway_pb2.CancelChatRequest(message_id=message_id), metadata=metadata, timeout=10
        )
