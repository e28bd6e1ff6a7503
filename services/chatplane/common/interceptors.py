"""The server interceptor every service installs: it sets the request id, maps domain errors
(and failed downstream calls) to gRPC status with details, and logs bugs as INTERNAL."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import grpc
from google.protobuf.message import DecodeError, Message

from chatplane.common import errors, status_mapping
from chatplane.common.context import request_id_var, tenant_var
from chatplane.common.ids import new_id
from chatplane.common.trace_context import adopt

_log = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"

Context = grpc.aio.ServicerContext[Any, Any]
if TYPE_CHECKING:  # the stubs' generic RpcMethodHandler is not subscriptable at run time
    Handler = grpc.RpcMethodHandler[Any, Any]
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]
# On an aio server the behaviours are coroutines / async generators (the stubs type them sync).
UnaryBehavior = Callable[[Any, Context], Awaitable[Any]]
StreamBehavior = Callable[[Any, Context], AsyncIterator[Any]]
# Runs before the handler, inside the error mapping (e.g. the Gateway's authentication).
CallCheck = Callable[[str, Context], Awaitable[None]]


class _Undecodable:
    """Stands for a request whose bytes are not a valid message of the method's type."""


_UNDECODABLE = _Undecodable()


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """The method's deserializer, answering _UNDECODABLE instead of raising: gRPC would turn
    the exception into UNKNOWN, while a malformed request is the caller's INVALID_ARGUMENT."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return _UNDECODABLE

    return parse


def _check_decoded(request: Any, refuse_nul: bool) -> None:
    if request is _UNDECODABLE:
        raise errors.InvalidArgument("request", "is not a valid message of the method's type")
    if refuse_nul and isinstance(request, Message) and (field := nul_field(request)):
        # PostgreSQL text cannot hold U+0000: refused here, naming the field, rather than
        # failing in the database as INTERNAL.
        raise errors.InvalidArgument(field, "must not contain NUL (U+0000) characters")


def nul_field(message: Message, prefix: str = "") -> str:
    """The path of the first string field (at any depth) holding U+0000, "" when none does."""
    for field, value in message.ListFields():
        name = prefix + field.name
        if field.type == field.TYPE_STRING:
            if any("\x00" in text for text in (value if field.is_repeated else (value,))):
                return name
        elif field.type == field.TYPE_MESSAGE:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                entries = value.items()
                for key, item in entries:
                    if (isinstance(key, str) and "\x00" in key) or (
                        isinstance(item, str) and "\x00" in item
                    ):
                        return name
                    if isinstance(item, Message) and (found := nul_field(item, f"{name}.")):
                        return found
                continue
            for item in value if field.is_repeated else (value,):
                if found := nul_field(item, f"{name}."):
                    return found
    return ""


def _request_id(metadata: Any) -> str:
    for key, value in metadata:
        if key == REQUEST_ID_KEY and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return new_id()


def _tenant(request: Any) -> str:
    """The tenant an internal request acts for (`tenant_id`, or `owner.tenant_id`), for logs."""
    tenant = getattr(request, "tenant_id", None)
    if tenant is None:
        tenant = getattr(getattr(request, "owner", None), "tenant_id", None)
    return tenant if isinstance(tenant, str) else ""


def _enter_call(request: Any, context: Context) -> None:
    """Sets the call's request id, trace context and tenant for logs and outbound calls."""
    metadata = context.invocation_metadata() or ()
    request_id_var.set(_request_id(metadata))
    adopt(metadata)
    tenant_var.set(_tenant(request))


async def _abort(context: Context, error: Exception, method: str) -> None:
    request_id = request_id_var.get()
    if isinstance(error, grpc.aio.AioRpcError):
        error = status_mapping.from_rpc_error(error, method)
    if isinstance(error, errors.ChatplaneError):
        domain: errors.ChatplaneError | None = error
    else:
        _log.exception("unhandled error in %s", method, exc_info=error)
        domain = None
    status = status_mapping.to_status(domain, request_id)
    await context.abort(status.code, status.details, status.trailing_metadata)


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Request id + error mapping (+ an optional check such as authentication) around every
    unary and server-streaming handler. With `refuse_nul` a request with U+0000 in any string
    field is INVALID_ARGUMENT naming it (the internal services: PostgreSQL text cannot hold
    it); the Gateway validates its public fields itself, as docs/api.md documents."""

    def __init__(self, check: CallCheck | None = None, *, refuse_nul: bool = True) -> None:
        self._check = check
        self._refuse_nul = refuse_nul

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        check, refuse_nul = self._check, self._refuse_nul
        if handler.unary_unary is not None:
            unary = cast("UnaryBehavior", handler.unary_unary)

            async def unary_behavior(request: Any, context: Context) -> Any:
                _enter_call(request, context)
                try:
                    _check_decoded(request, refuse_nul)
                    if check is not None:
                        await check(method, context)
                    return await unary(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as error:
                    await _abort(context, error, method)

            return grpc.unary_unary_rpc_method_handler(
                unary_behavior,
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            stream = cast("StreamBehavior", handler.unary_stream)

            async def stream_behavior(request: Any, context: Context) -> AsyncIterator[Any]:
                _enter_call(request, context)
                try:
                    _check_decoded(request, refuse_nul)
                    if check is not None:
                        await check(method, context)
                    async for response in stream(request, context):
                        yield response
                except grpc.aio.AbortError:
                    raise
                except Exception as error:
                    await _abort(context, error, method)

            return grpc.unary_stream_rpc_method_handler(
                stream_behavior,
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return _client_stream_handler(handler, method, check, refuse_nul)
        return handler


async def _decoded(requests: AsyncIterator[Any], refuse_nul: bool) -> AsyncIterator[Any]:
    """The messages of a client stream, each checked like a unary request."""
    async for request in requests:
        _check_decoded(request, refuse_nul)
        yield request


def _client_stream_handler(
    handler: Handler, method: str, check: CallCheck | None, refuse_nul: bool
) -> Handler:
    """The interceptor's work (request id, check, error mapping) around a client-streaming
    handler (document ingestion)."""
    client_stream = cast("UnaryBehavior", handler.stream_unary)

    async def client_stream_behavior(requests: AsyncIterator[Any], context: Context) -> Any:
        _enter_call(None, context)
        try:
            if check is not None:
                await check(method, context)
            return await client_stream(_decoded(requests, refuse_nul), context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _abort(context, error, method)

    return grpc.stream_unary_rpc_method_handler(
        client_stream_behavior,
        request_deserializer=_tolerant(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )
