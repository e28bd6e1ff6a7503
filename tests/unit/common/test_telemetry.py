"""Tracing and metrics plumbing: bounded labels, the file exporter, cancellation through the
OpenTelemetry aio client interceptors, trace context with tracing off."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.sdk.trace import TracerProvider

from chatplane.common.client_interceptors import CancelPropagation
from chatplane.common.metrics import TenantLabels
from chatplane.common.rpc_metrics import method_label
from chatplane.common.trace_context import adopt, current_trace_id, outgoing

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_the_tenant_label_is_bounded() -> None:
    labels = TenantLabels(limit=2)
    assert [labels(t) for t in ("a", "b", "c", "a", "d")] == ["a", "b", "_other", "a", "_other"]


def test_method_labels_drop_the_package() -> None:
    assert method_label("/chatplane.v1.GatewayService/Chat") == "GatewayService/Chat"
    assert method_label("/grpc.health.v1.Health/Check") == "Health/Check"


def test_with_tracing_off_the_callers_trace_id_is_the_calls() -> None:
    adopt([("traceparent", TRACEPARENT), ("tracestate", "k=v")])
    assert current_trace_id() == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert dict(outgoing())["traceparent"] == TRACEPARENT
    adopt([])
    assert current_trace_id() not in ("", "4bf92f3577b34da6a3ce929d0e0e4736")


def test_the_file_exporter_writes_one_json_span_per_line(tmp_path: Path) -> None:
    out = tmp_path / "spans.jsonl"
    script = textwrap.dedent(
        f"""
        from chatplane.common.settings import Settings
        from chatplane.common import telemetry
        telemetry.configure_tracing(
            "unit", Settings(trace_exporter="file", trace_file={str(out)!r})
        )
        with telemetry.tracer().start_as_current_span("outer"):
            with telemetry.tracer().start_as_current_span("inner"):
                pass
        telemetry.shutdown_tracing()
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    spans = [json.loads(line) for line in out.read_text().splitlines()]
    assert [s["name"] for s in spans] == ["inner", "outer"]
    assert spans[0]["parent_id"] == spans[1]["context"]["span_id"]
    assert spans[0]["resource"]["attributes"]["service.name"] == "chatplane-unit"


async def test_cancelling_a_traced_unary_call_cancels_the_rpc() -> None:
    cancelled = asyncio.Event()

    async def slow(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return request

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.Slow", {"Call": grpc.unary_unary_rpc_method_handler(slow)}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    interceptors = [
        *aio_client_interceptors(tracer_provider=TracerProvider()),  # type: ignore[no-untyped-call]
        CancelPropagation(),
    ]
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", interceptors=interceptors
        ) as channel:
            call = channel.unary_unary("/test.Slow/Call")

            async def invoke() -> bytes:
                return await call(b"x", timeout=30)  # type: ignore[no-any-return]

            task = asyncio.create_task(invoke())
            await asyncio.sleep(0.2)
            task.cancel()
            await asyncio.wait_for(cancelled.wait(), 2)
    finally:
        await server.stop(None)
