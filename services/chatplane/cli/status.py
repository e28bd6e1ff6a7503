"""`chatplane status`: a one-screen live summary of the running stack, from each service's
gRPC health and Prometheus metrics: health, RPC traffic and errors, active streams, time to
first token (p50/p99 from the Gateway's histogram), tokens, consumer lag, event-loop lag.

Without `--watch` the numbers cover the time since each service started; with it, each
refresh shows the rates and quantiles of the last interval."""

from __future__ import annotations

import asyncio
import contextlib
import math
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import click
import grpc
from grpc_health.v1 import health_pb2
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.live import Live
from rich.table import Table

from chatplane.common.tls import TlsFiles, client_channel
from chatplane.launcher.stack import SERVICES, StackInfo

_TIMEOUT_SECONDS = 2.0
_INFRASTRUCTURE_METHODS = ("Health/", "ServerReflection/")

# A sample: metric name, its labels, its value.
Sample = tuple[str, Mapping[str, str], float]


def histogram_quantile(quantile: float, buckets: Iterable[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) buckets: linear
    interpolation inside the bucket the rank falls in; NaN without observations."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return math.nan
    rank = quantile * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for upper_bound, count in ordered:
        if count >= rank:
            if math.isinf(upper_bound):
                return lower_bound  # the highest finite bound, as Prometheus does
            if count == lower_count:
                return upper_bound
            return lower_bound + (upper_bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = upper_bound, count
    return ordered[-1][0]


def parse_exposition(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition."""
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def _total(samples: Sequence[Sample], name: str, **labels: str) -> float:
    return sum(
        v for n, ls, v in samples if n == name and all(ls.get(k) == x for k, x in labels.items())
    )


def _buckets(samples: Sequence[Sample], name: str) -> list[tuple[float, float]]:
    merged: dict[float, float] = defaultdict(float)
    for n, labels, v in samples:
        if n == f"{name}_bucket":
            merged[float(labels["le"])] += v
    return list(merged.items())


def delta(now: Sequence[Sample], before: Sequence[Sample]) -> list[Sample]:
    """Counters and histograms as increases since `before`; gauges as they are now."""
    previous = {(n, tuple(sorted(ls.items()))): v for n, ls, v in before}
    changed: list[Sample] = []
    for name, labels, value in now:
        cumulative = name.endswith(("_total", "_count", "_sum", "_bucket"))
        old = previous.get((name, tuple(sorted(labels.items()))), 0.0) if cumulative else 0.0
        changed.append((name, labels, value - old))
    return changed


@dataclass
class ServiceStatus:
    """What `status` shows for one service."""

    name: str
    health: str
    address: str
    metrics_url: str
    samples: list[Sample] = field(default_factory=list)

    def row(self, seconds: float | None) -> list[str]:
        """Table cells: per second when `seconds` is given, else totals since start."""
        s = self.samples
        # The service's own calls: not health checks (ours included) or reflection.
        rpcs = [
            (labels, v)
            for n, labels, v in s
            if n == "chatplane_rpc_server_duration_seconds_count"
            and not labels.get("method", "").startswith(_INFRASTRUCTURE_METHODS)
        ]
        calls = sum(v for _, v in rpcs)
        errors = sum(v for labels, v in rpcs if labels.get("code") not in ("OK", "CANCELLED"))
        traffic = f"{calls / seconds:.1f}/s" if seconds else f"{calls:.0f}"
        loop_p99 = histogram_quantile(0.99, _buckets(s, "chatplane_event_loop_lag_seconds"))
        return [
            self.name,
            self.health,
            self.address,
            traffic if self.samples else "-",
            f"{errors:.0f}" if self.samples else "-",
            f"{_total(s, 'chatplane_active_streams'):.0f}" if self.samples else "-",
            _ms(loop_p99),
        ]


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.0f} ms"


async def _health(address: str, tls: TlsFiles | None) -> str:
    try:
        async with client_channel(address, tls) as channel:
            check = channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            response = await check(
                health_pb2.HealthCheckRequest(service=""), timeout=_TIMEOUT_SECONDS
            )
    except grpc.aio.AioRpcError as error:
        return "DOWN" if error.code() is grpc.StatusCode.UNAVAILABLE else error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def _scrape(url: str) -> list[Sample]:
    if not url.startswith("http://"):
        return []
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_SECONDS) as response:
            return parse_exposition(response.read().decode())
    except OSError:
        return []


async def collect(info: StackInfo) -> list[ServiceStatus]:
    """Health and metrics of every service of the stack, read concurrently."""
    names = [n for n in SERVICES if n in info.ports]

    async def one(name: str) -> ServiceStatus:
        url = info.metrics_url(name)
        health, samples = await asyncio.gather(
            _health(info.address(name), info.client_tls()), asyncio.to_thread(_scrape, url)
        )
        return ServiceStatus(name, health, info.address(name), url, samples)

    return list(await asyncio.gather(*(one(n) for n in names)))


def render(statuses: Sequence[ServiceStatus], seconds: float | None) -> Table:
    """The one-screen summary."""
    window = f"last {seconds:.0f} s" if seconds else "since start"
    table = Table(title=f"chatplane status ({window})", title_justify="left")
    for column in ("service", "health", "address", "RPCs", "errors", "streams", "loop p99"):
        table.add_column(column)
    for status in statuses:
        table.add_row(*status.row(seconds))
    by_name = {s.name: s.samples for s in statuses}
    gateway = by_name.get("gateway", [])
    ttft = _buckets(gateway, "chatplane_gateway_time_to_first_token_seconds")
    agent = by_name.get("agent", [])
    persistence = by_name.get("persistence", [])
    rejected = _total(gateway, "chatplane_gateway_rejections_total")
    tokens_in = _total(agent, "chatplane_agent_tokens_total", direction="input")
    tokens_out = _total(agent, "chatplane_agent_tokens_total", direction="output")
    lag = _total(persistence, "chatplane_log_consumer_lag_records", group="chatplane-persistence")
    stored = _total(persistence, "chatplane_persistence_records_total", outcome="stored")
    table.caption = (
        f"TTFT p50 {_ms(histogram_quantile(0.5, ttft))}, p99 {_ms(histogram_quantile(0.99, ttft))}"
        f"\ntokens in {tokens_in:.0f} / out {tokens_out:.0f}, rejected {rejected:.0f}"
        f"\nconsumer lag {lag:.0f} records, stored {stored:.0f}"
    )
    table.caption_justify = "left"
    return table


async def _watch(info: StackInfo, interval: float, console: Console) -> None:
    before = await collect(info)
    with Live(render(before, None), console=console, auto_refresh=False) as live:
        while True:
            await asyncio.sleep(interval)
            now = await collect(info)
            previous = {s.name: s.samples for s in before}
            windowed = [
                ServiceStatus(
                    s.name, s.health, s.address, s.metrics_url, delta(s.samples, previous[s.name])
                )
                for s in now
            ]
            live.update(render(windowed, interval), refresh=True)
            before = now


@click.command()
@click.option(
    "--watch",
    "interval",
    type=click.FloatRange(min=0.5),
    default=None,
    help="Refresh every N seconds, showing each interval's rates (Ctrl-C stops).",
)
@click.pass_obj
def status(data_dir: Path, interval: float | None) -> None:
    """A one-screen summary of the running stack: health, traffic, streams, TTFT, lag."""
    info = StackInfo.load(data_dir)
    if info is None:
        raise click.ClickException(f"no stack found in {data_dir}; start it with `make run`")
    console = Console()
    if interval is None:
        console.print(render(asyncio.run(collect(info)), None))
        return
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_watch(info, interval, console))
