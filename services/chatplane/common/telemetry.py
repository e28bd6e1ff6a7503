"""Tracing for a service process: OpenTelemetry's SDK with an OTLP (or file) exporter when
`trace_exporter` is set, nothing at all when it is `none` (the default: no SDK tracer provider,
no tracing interceptors, the API's no-op tracer).

The tracer provider is process-wide by OpenTelemetry's design; this module holds what the
entry point configured once from Settings, and the server bootstrap and `internal_channel`
ask it for their interceptors."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from chatplane.common.client_interceptors import CancelPropagation, ContextPropagation
from chatplane.common.settings import Settings

_log = logging.getLogger(__name__)

TRACER_NAME = "chatplane"


@dataclass
class _Tracing:
    provider: TracerProvider | None = None
    files: list[IO[str]] = field(default_factory=list)
    # Where this process serves /metrics (-1: nowhere), set with the tracing.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = -1


_tracing = _Tracing()


def _span_line(span: ReadableSpan) -> str:
    return str(span.to_json(indent=None)) + "\n"


def _exporter(service: str, settings: Settings) -> SpanExporter:
    if settings.trace_exporter == "file":
        path = (
            Path(settings.trace_file)
            if settings.trace_file
            else settings.data_path("traces") / f"{service}.jsonl"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        out = path.open("a", encoding="utf-8")
        _tracing.files.append(out)
        return ConsoleSpanExporter(out=out, formatter=_span_line)
    # Imported here: the exporter pulls in its own gRPC/protobuf modules, needed only for OTLP.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter,
    )

    # Without an endpoint, the exporter reads the standard OTEL_EXPORTER_OTLP_* variables.
    return OTLPSpanExporter(endpoint=settings.otlp_endpoint or None)


def configure_telemetry(service: str, settings: Settings) -> None:
    """Once per process, from the entry point: where /metrics is served, and tracing."""
    _tracing.metrics_host = settings.metrics_host
    _tracing.metrics_port = settings.metrics_port
    configure_tracing(service, settings)


def metrics_address() -> tuple[str, int]:
    """host and port for the /metrics endpoint (port 0: a free one, -1: none)."""
    return _tracing.metrics_host, _tracing.metrics_port


def configure_tracing(service: str, settings: Settings) -> None:
    """Installs the SDK tracer provider when tracing is on; does nothing when it is off."""
    if settings.trace_exporter == "none":
        return
    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": f"chatplane-{service}", "service.namespace": "chatplane"}
        ),
        sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(_exporter(service, settings)))
    trace.set_tracer_provider(provider)
    _tracing.provider = provider
    _log.info("tracing on", extra={"exporter": settings.trace_exporter})


def tracing_enabled() -> bool:
    """True when this process records spans."""
    return _tracing.provider is not None


def tracer() -> trace.Tracer:
    """chatplane's tracer (a no-op one when tracing is off)."""
    return trace.get_tracer(TRACER_NAME)


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The tracing server interceptor (outermost, so every log line of a call has its trace
    id), or none."""
    if _tracing.provider is None:
        return []
    return [aio_server_interceptor(tracer_provider=_tracing.provider)]  # type: ignore[no-untyped-call]


def client_interceptors() -> list[Any]:
    """Interceptors of channels to other chatplane services: context propagation always;
    with tracing on, OpenTelemetry's client spans (all four call shapes) and the cancel fix."""
    interceptors: list[Any] = [ContextPropagation()]
    if _tracing.provider is not None:
        interceptors += [
            *aio_client_interceptors(tracer_provider=_tracing.provider),  # type: ignore[no-untyped-call]
            CancelPropagation(),
        ]
    return interceptors


def shutdown_tracing() -> None:
    """Flushes the spans still buffered and stops the exporter."""
    provider, _tracing.provider = _tracing.provider, None
    if provider is not None:
        provider.shutdown()
    for out in _tracing.files:
        out.close()
    _tracing.files.clear()
