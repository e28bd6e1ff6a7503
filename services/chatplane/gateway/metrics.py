"""The Gateway's metrics: what a user of a stream feels (time to first token, the gap between
tokens, the lag the pipeline adds to each token) and the requests turned away by the rate
limit or the quota. Labels: the model (a configured name) and the rejection reason."""

from __future__ import annotations

import time
from typing import Final

from prometheus_client import Counter, Histogram

from chatplane.common.metrics import FAST_BUCKETS, FIRST_TOKEN_BUCKETS
from chatplane.v1 import gateway_pb2

TIME_TO_FIRST_TOKEN = Histogram(
    "chatplane_gateway_time_to_first_token_seconds",
    "From the Chat call reaching the servicer (authenticated, admitted) to its first text delta",
    ["model"],
    buckets=FIRST_TOKEN_BUCKETS,
)
INTER_TOKEN = Histogram(
    "chatplane_gateway_inter_token_seconds",
    "Gap between consecutive text deltas of one answer, as relayed to the client",
    ["model"],
    buckets=FAST_BUCKETS,
)
RELAY_LAG = Histogram(
    "chatplane_gateway_token_relay_lag_seconds",
    "Per token: relay time at the Gateway - the time the model backend emitted it (pipeline lag)",
    ["model"],
    buckets=FAST_BUCKETS,
)
REJECTIONS = Counter(
    "chatplane_gateway_rejections_total",
    "Requests refused with RESOURCE_EXHAUSTED, by reason (rate_limit, quota)",
    ["reason"],
)
REJECTION_REASONS: Final = ("rate_limit", "quota")
for _reason in REJECTION_REASONS:
    REJECTIONS.labels(_reason)  # present at 0 from the start, for rate() and alerts


class ChatStreamMetrics:
    """Observes one Chat stream's events; replays of stored answers are not generation and
    are left out. The model's histogram children are looked up once, at `started`, not per
    token."""

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self._last = 0.0
        self._generated = True
        self._deltas = 0
        self._model = ""

    def _children(self, model: str) -> None:
        self._model = model
        self._first_token = TIME_TO_FIRST_TOKEN.labels(model)
        self._inter_token = INTER_TOKEN.labels(model)
        self._relay_lag = RELAY_LAG.labels(model)

    def observe(self, event: gateway_pb2.ChatResponse) -> None:
        kind = event.WhichOneof("event")
        if kind == "started":
            self._children(event.started.model)
            self._generated = not event.started.replayed
        elif kind == "delta" and self._generated:
            now = time.perf_counter()
            if self._deltas == 0:
                if not self._model:
                    self._children("")  # a stream without `started` (not sent today)
                self._first_token.observe(now - self._start)
            else:
                self._inter_token.observe(now - self._last)
            self._last = now
            self._deltas += 1
            emitted = event.delta.emit_time_unix_nanos
            if emitted:
                self._relay_lag.observe(max(0.0, (time.time_ns() - emitted) / 1e9))
