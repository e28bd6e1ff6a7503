"""W3C trace context carried with a turn: taken from the caller's gRPC metadata (or started
here), passed from the Gateway to the Agent, and written into the headers of every message-log
record, so a record can be tied to the request that produced it. The OpenTelemetry SDK, once
configured, reads and writes the same `traceparent` / `tracestate` keys."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable

from chatplane.common.context import request_id_var

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
REQUEST_ID = "x-request-id"
_TRACEPARENT = re.compile(r"^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")


def new_traceparent() -> str:
    """A traceparent for a new trace (sampled)."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def propagated(metadata: Iterable[tuple[str, str | bytes]]) -> tuple[tuple[str, str], ...]:
    """The trace context to pass on: the caller's valid traceparent (and tracestate) or a new
    one, plus this call's request id."""
    values = {k: v for k, v in metadata if isinstance(v, str)}
    traceparent = values.get(TRACEPARENT, "")
    context = [(TRACEPARENT, traceparent if _TRACEPARENT.match(traceparent) else new_traceparent())]
    if TRACESTATE in values and context[0][1] == traceparent and len(values[TRACESTATE]) <= 512:
        context.append((TRACESTATE, values[TRACESTATE]))
    context.append((REQUEST_ID, request_id_var.get()))
    return tuple(context)
