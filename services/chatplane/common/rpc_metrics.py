"""The server interceptor that times every RPC and counts it by final status code, keeps the
gauge of server streams in progress, and writes one access-log line per call (method, code,
duration; never the request's content). Health checks and reflection are not logged."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, cast

import grpc

from chatplane.common.metrics import ACTIVE_STREAMS, RPC_DURATION

_log = logging.getLogger("chatplane.access")
_UNLOGGED_PREFIXES = ("/grpc.health.", "/grpc.reflection.")

if TYPE_CHECKING:
    from chatplane.common.interceptors import (
        Context,
        Continuation,
        Handler,
        StreamBehavior,
        UnaryBehavior,
    )


def method_label(full_method: str) -> str:
    """`/chatplane.v1.GatewayService/Chat` → `GatewayService/Chat` (bounded: registered
    methods only, since unknown methods never reach a handler)."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return f"{service.rpartition('.')[2]}/{method}"


def _done(service: str, method: str, logged: bool, started: float, code: str) -> None:
    seconds = time.perf_counter() - started
    RPC_DURATION.labels(service, method, code).observe(seconds)
    if logged:
        _log.info(
            "call finished",
            extra={"method": method, "code": code, "duration_ms": round(seconds * 1000, 2)},
        )


def _final_code(context: Context, error: BaseException | None) -> str:
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED.name
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if error is not None and not isinstance(error, grpc.aio.AbortError):
        return grpc.StatusCode.UNKNOWN.name
    return grpc.StatusCode.OK.name


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Observes `chatplane_rpc_server_duration_seconds{service,method,code}` for unary and
    server-streaming RPCs; counts the latter in `chatplane_active_streams`."""

    def __init__(self, service: str) -> None:
        self._service = service

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = method_label(handler_call_details.method)
        logged = not handler_call_details.method.startswith(_UNLOGGED_PREFIXES)
        service = self._service
        if handler.unary_unary is not None:
            unary = cast("UnaryBehavior", handler.unary_unary)

            async def unary_behavior(request: Any, context: Context) -> Any:
                started = time.perf_counter()
                error: BaseException | None = None
                try:
                    return await unary(request, context)
                except BaseException as caught:
                    error = caught
                    raise
                finally:
                    _done(service, method, logged, started, _final_code(context, error))

            return grpc.unary_unary_rpc_method_handler(
                unary_behavior,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            stream = cast("StreamBehavior", handler.unary_stream)
            active = ACTIVE_STREAMS.labels(service, method)

            async def stream_behavior(request: Any, context: Context) -> AsyncIterator[Any]:
                started = time.perf_counter()
                error: BaseException | None = None
                active.inc()
                try:
                    async for response in stream(request, context):
                        yield response
                except BaseException as caught:
                    error = caught
                    raise
                finally:
                    active.dec()
                    _done(service, method, logged, started, _final_code(context, error))

            return grpc.unary_stream_rpc_method_handler(
                stream_behavior,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
