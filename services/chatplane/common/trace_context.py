"""W3C trace context carried with a call: taken from the caller's gRPC metadata (or started
here), passed on to the services this call reaches, and written into the headers of every
message-log record, so a record can be tied to the request that produced it.

With tracing on (chatplane.common.telemetry), the current OpenTelemetry span is the context:
its traceparent is what goes out. With tracing off there are no spans, yet every call still
carries a trace id (the caller's, or one started at the edge) so that logs of one turn can be
found across the services; that costs a ContextVar, not a tracer."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from contextvars import ContextVar

from opentelemetry import trace

from chatplane.common.context import request_id_var

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
REQUEST_ID = "x-request-id"
_TRACEPARENT = re.compile(r"^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")
_MAX_TRACESTATE = 512

# This call's trace context when no OpenTelemetry span is recording (tracing off).
traceparent_var: ContextVar[str] = ContextVar("traceparent", default="")
tracestate_var: ContextVar[str] = ContextVar("tracestate", default="")


def new_traceparent() -> str:
    """A traceparent for a new trace (sampled)."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def _span_traceparent() -> tuple[str, str] | None:
    """The current OpenTelemetry span's traceparent and tracestate, if there is a span."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    traceparent = (
        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}"
        f"-{int(span_context.trace_flags):02x}"
    )
    return traceparent, span_context.trace_state.to_header()


def adopt(metadata: Iterable[tuple[str, str | bytes]]) -> None:
    """Sets this call's trace context: the current span's (tracing on), else the caller's
    valid traceparent (with its tracestate), else a new trace."""
    span = _span_traceparent()
    if span is not None:
        traceparent_var.set(span[0])
        tracestate_var.set(span[1])
        return
    values = {k: v for k, v in metadata if isinstance(v, str) and k in (TRACEPARENT, TRACESTATE)}
    traceparent = values.get(TRACEPARENT, "")
    if _TRACEPARENT.match(traceparent):
        traceparent_var.set(traceparent)
        tracestate = values.get(TRACESTATE, "")
        tracestate_var.set(tracestate if len(tracestate) <= _MAX_TRACESTATE else "")
    else:
        traceparent_var.set(new_traceparent())
        tracestate_var.set("")  # it belonged to the discarded trace


def current_trace_id() -> str:
    """The trace id (32 hex digits) of this call, or "" outside any call."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        return f"{span_context.trace_id:032x}"
    return traceparent_var.get()[3:35]


def outgoing() -> tuple[tuple[str, str], ...]:
    """The trace context and request id to pass to the next hop (metadata or log headers)."""
    span = _span_traceparent()
    traceparent, tracestate = span if span is not None else (traceparent_var.get(), "")
    if span is None:
        tracestate = tracestate_var.get()
    context: list[tuple[str, str]] = []
    if traceparent:
        context.append((TRACEPARENT, traceparent))
        if tracestate:
            context.append((TRACESTATE, tracestate))
    context.append((REQUEST_ID, request_id_var.get()))
    return tuple(context)


def propagated(metadata: Iterable[tuple[str, str | bytes]]) -> tuple[tuple[str, str], ...]:
    """The trace context to pass on: the current span's, the caller's valid traceparent (and
    tracestate) or a new one, plus this call's request id."""
    adopt(metadata)
    return outgoing()
