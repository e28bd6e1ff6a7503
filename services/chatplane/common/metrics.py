"""Prometheus metrics every service shares (per-RPC duration and status, active streams,
event-loop lag, the service's identity) and the `/metrics` HTTP endpoint of each process.

Metric objects live in the default registry, as prometheus-client intends; labels are bounded
by construction: service and method names, gRPC codes, and never a user, message or
conversation id (see docs/observability.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from importlib import metadata
from wsgiref.simple_server import WSGIServer

from prometheus_client import Gauge, Histogram, start_http_server

_log = logging.getLogger(__name__)

# From 1 ms (a health check) to the 300 s turn timeout (a whole streamed answer).
DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
# Short operations on the path to the first token (recall, a log append, a batch write): the
# same steps, from 0.5 ms to 10 s.
FAST_BUCKETS = (0.0005, *(bound for bound in DURATION_BUCKETS if bound <= 10.0))
# Time to first token, as a user feels it (finer where answers usually start: 0.1 to 1 s).
FIRST_TOKEN_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
)  # fmt: skip

SERVICE_INFO = Gauge(
    "chatplane_service_info",
    "Always 1: which chatplane service this process is (join on instance for per-service views)",
    ["service", "version"],
)
RPC_DURATION = Histogram(
    "chatplane_rpc_server_duration_seconds",
    "Server-side duration of RPCs (a whole stream for streaming RPCs), by final status code",
    ["service", "method", "code"],
    buckets=DURATION_BUCKETS,
)
ACTIVE_STREAMS = Gauge(
    "chatplane_active_streams",
    "Server-streaming RPCs in progress",
    ["service", "method"],
)
EVENT_LOOP_LAG = Histogram(
    "chatplane_event_loop_lag_seconds",
    "How late the asyncio event loop runs a timer (saturation: CPU or blocking calls)",
    ["service"],
    buckets=FAST_BUCKETS,
)
_LOOP_PROBE_SECONDS = 0.25


def _version() -> str:
    try:
        return metadata.version("chatplane")
    except metadata.PackageNotFoundError:
        return "unknown"


class MetricsEndpoint:
    """The process's `/metrics` endpoint (prometheus-client's HTTP server on its own thread)
    plus the event-loop lag probe."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.port = 0
        self._server: WSGIServer | None = None
        self._probe: asyncio.Task[None] | None = None

    def start(self, host: str, port: int) -> int:
        """Serves /metrics on host:port (0: a free port); the bound port, or 0 if port is -1."""
        SERVICE_INFO.labels(self.service, _version()).set(1)
        self._probe = asyncio.get_running_loop().create_task(
            self._probe_loop(), name="event-loop-lag-probe"
        )
        if port < 0:
            return 0
        server, _thread = start_http_server(port, addr=host)
        self._server = server
        self.port = int(server.server_port)
        return self.port

    async def _probe_loop(self) -> None:
        loop = asyncio.get_running_loop()
        histogram = EVENT_LOOP_LAG.labels(self.service)
        while True:
            before = loop.time()
            await asyncio.sleep(_LOOP_PROBE_SECONDS)
            histogram.observe(max(0.0, loop.time() - before - _LOOP_PROBE_SECONDS))

    async def stop(self) -> None:
        """Stops the endpoint and the probe."""
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        if self._server is not None:
            server, self._server = self._server, None
            await asyncio.to_thread(server.shutdown)
            server.server_close()


class TenantLabels:
    """Bounds the `tenant` label: the first `limit` tenants seen by this process keep their
    id, every later one is counted as `_other`."""

    OTHER = "_other"

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, tenant_id: str) -> str:
        if tenant_id in self._seen:
            return tenant_id
        if len(self._seen) < self._limit:
            self._seen.add(tenant_id)
            return tenant_id
        return self.OTHER
