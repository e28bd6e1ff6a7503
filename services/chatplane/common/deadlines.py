"""Deadlines for outbound calls, derived from the time the inbound call has left."""

from __future__ import annotations

from typing import Any

import grpc

from chatplane.common import errors

# Keep a little of the caller's time for answering it after the downstream call returns.
_MARGIN_SECONDS = 0.05


def outbound_timeout(context: grpc.aio.ServicerContext[Any, Any] | None, cap: float) -> float:
    """Seconds to give a downstream call: the caller's remaining time less a margin, at most
    `cap`; raises DeadlineExceeded when nothing is left."""
    remaining = context.time_remaining() if context is not None else None
    if remaining is None:
        return cap
    timeout = min(cap, remaining - _MARGIN_SECONDS)
    if timeout <= 0:
        raise errors.DeadlineExceeded("deadline exceeded before the downstream call")
    return timeout
