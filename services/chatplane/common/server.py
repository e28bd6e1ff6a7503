"""Server bootstrap shared by the four services: a `grpc.aio` server with the standard health
and reflection services, the service interceptor, a ready line on stdout, and a graceful stop
on SIGTERM (health NOT_SERVING → drain in-flight calls → exit)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from chatplane.common import telemetry
from chatplane.common.interceptors import CallCheck, ServiceInterceptor
from chatplane.common.metrics import MetricsEndpoint
from chatplane.common.rpc_metrics import MetricsInterceptor
from chatplane.common.tls import TlsCredentials

_log = logging.getLogger(__name__)

# Bounded message size: the largest request is a chat message (32 KiB by default), or a whole
# document sent with UploadDocument (at most this much).
GRPC_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
SERVER_OPTIONS: Sequence[tuple[str, int]] = (
    ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.http2.max_pings_without_data", 0),
    # Calls that arrived but that the event loop has not picked up yet. gRPC's defaults
    # (1,000 soft, 3,000 hard) drop a share of a burst beyond 1,000 with a bare CANCELLED
    # before any handler runs; a flood of new streams must instead reach our handlers and get
    # their documented answer (RESOURCE_EXHAUSTED from the rate limit). A pending call costs
    # a few KiB; the limits keep the backlog bounded. A call not picked up within 120 s (gRPC's
    # default: 30 s) is cancelled; a call's own deadline, if shorter, ends it first.
    ("grpc.server.max_pending_requests", 20_000),
    ("grpc.server.max_pending_requests_hard_limit", 30_000),
    ("grpc.server_max_unrequested_time_in_server", 120),
)

# Between our own services a restarted peer should be reached again within a fraction of a
# second, not after gRPC's default exponential backoff (1 s growing to 120 s).
CHANNEL_OPTIONS: Sequence[tuple[str, int]] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
)


async def serve(
    *,
    name: str,
    host: str,
    port: int,
    service_names: Sequence[str],
    register: Callable[[grpc.aio.Server], None],
    drain_grace_seconds: float,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    check: CallCheck | None = None,
    tls: TlsCredentials | None = None,
    ready_details: Mapping[str, object] | None = None,
    on_drain: Callable[[], Awaitable[None]] | None = None,
    refuse_nul: bool = True,
) -> None:
    """Run a service until SIGTERM/SIGINT, then drain and return. With `tls` it serves mutual
    TLS only (no plaintext port). `ready_details` are added to the ready line (e.g. the
    Agent's model). `on_drain` runs when draining starts, before in-flight calls are awaited."""
    # Outermost first: the trace span (so every log line of the call has its trace id), the
    # RPC metrics (they see the final status code), then request id + error mapping.
    interceptors: list[grpc.aio.ServerInterceptor] = [
        *telemetry.server_interceptors(),
        MetricsInterceptor(name),
        ServiceInterceptor(check, refuse_nul=refuse_nul),
    ]
    server = grpc.aio.server(interceptors=interceptors, options=list(SERVER_OPTIONS))
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    if tls is None:
        bound = server.add_insecure_port(f"{host}:{port}")
    else:
        tls.log_identity()
        bound = server.add_secure_port(f"{host}:{port}", tls.server_credentials())
    if bound == 0:
        raise OSError(f"{name}: cannot bind {host}:{port}")
    await server.start()
    for service in (*service_names, ""):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    metrics = MetricsEndpoint(name)
    metrics_port = metrics.start(*telemetry.metrics_address())
    # The ready line: launchers and tests read the bound ports from it.
    ready = {
        "event": "ready",
        "service": name,
        "port": bound,
        "metrics_port": metrics_port,
        **(ready_details or {}),
    }
    sys.stdout.write(json.dumps(ready) + "\n")
    sys.stdout.flush()
    _log.info("serving", extra={"port": bound, "metrics_port": metrics_port})

    await stopping.wait()
    for signum in (signal.SIGTERM, signal.SIGINT):
        # A second signal (a supervisor repeating itself, Ctrl-C reaching the whole process
        # group) must not kill the drain or the exit that follows it.
        loop.remove_signal_handler(signum)
        signal.signal(signum, signal.SIG_IGN)
    _log.info("draining", extra={"grace_seconds": drain_grace_seconds})
    await health_servicer.enter_graceful_shutdown()
    if on_drain is not None:  # e.g. end open-ended streams, so the drain need not wait
        await on_drain()
    await server.stop(drain_grace_seconds)
    if on_stop is not None:
        await on_stop()
    await metrics.stop()
    telemetry.shutdown_tracing()
    _log.info("stopped")


def internal_channel(address: str, tls: TlsCredentials | None = None) -> grpc.aio.Channel:
    """A channel to another chatplane service; with `tls`, mutual TLS with this service's
    certificate (the peer's certificate must name the address's host)."""
    interceptors = telemetry.client_interceptors()
    if tls is None:
        return grpc.aio.insecure_channel(
            address, options=list(CHANNEL_OPTIONS), interceptors=interceptors
        )
    return grpc.aio.secure_channel(
        address, tls.channel_credentials(), options=list(CHANNEL_OPTIONS), interceptors=interceptors
    )
