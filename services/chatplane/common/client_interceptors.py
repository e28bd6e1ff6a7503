"""Client interceptors of the channels between chatplane services: pass the request id and
trace context on, and (with tracing on) make a cancelled caller cancel its unary call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
from grpc.aio import ClientCallDetails, Metadata

from chatplane.common.trace_context import outgoing

UnaryContinuation = Callable[[ClientCallDetails, Any], Any]


def _with_context(details: ClientCallDetails) -> ClientCallDetails:
    metadata = Metadata(*tuple(details.metadata or ()))
    for key, value in outgoing():
        if value and metadata.get(key) is None:
            metadata[key] = value
    return ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class ContextPropagation(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds `x-request-id` and `traceparent`/`tracestate` of the current call to unary calls
    that do not carry them yet (streaming calls pass them explicitly), so the logs of every
    service reached by one turn share its request id and trace id, tracing on or off."""

    async def intercept_unary_unary(
        self, continuation: UnaryContinuation, client_call_details: ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(_with_context(client_call_details), request)


class CancelPropagation(grpc.aio.UnaryUnaryClientInterceptor):
    """Awaits the call inside the interceptor chain, so that cancelling the caller cancels the
    RPC. OpenTelemetry's aio client interceptor awaits `call.code()` in grpc's interceptor
    task; cancelling that task leaves the RPC itself running on the server until its deadline
    (open-telemetry/opentelemetry-python-contrib#3271). Installed inside it."""

    async def intercept_unary_unary(
        self, continuation: UnaryContinuation, client_call_details: ClientCallDetails, request: Any
    ) -> Any:
        call = await continuation(client_call_details, request)
        try:
            await call
        except asyncio.CancelledError:
            call.cancel()
            raise
        except grpc.aio.AioRpcError:
            pass  # the caller sees the error when it awaits the call
        return call
