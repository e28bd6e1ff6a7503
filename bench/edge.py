"""Edge benchmark: what Envoy adds to a streamed answer, per protocol, side by side in one run
against one stack: native gRPC straight to the Gateway (the baseline), native gRPC through
Envoy, gRPC-Web through Envoy (HTTP/1.1, frames parsed as they arrive) and REST/JSON with
Server-Sent Events through Envoy. Per token: relay lag (client receipt time - the backend's
emission time stamped in the Agent); per answer: the first token's lag (added TTFT). At
concurrency 1 (paths interleaved turn by turn) and 50 (50 users, each its own key and
connection). Reuses the streaming benchmark's stack settings, questions and stream checks."""

from __future__ import annotations

import asyncio
import functools
import json
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import h11
import httpx

from bench.harness import Options, create_keys, progress, running_stack, user_channel
from bench.report import Row, Target
from bench.stats import ns_to_ms, percentile
from bench.streaming import CALL_TIMEOUT_SECONDS, QUESTIONS, STACK_ENV, TurnResult, check_stream
from chatplane.launcher.stack import EDGE
from chatplane.v1 import gateway_pb2, gateway_pb2_grpc, resources_pb2

NAME = "edge"
TITLE = "edge: lag Envoy adds to a streamed answer, per protocol (embedded profile, loopback)"

DIRECT = "gRPC direct"
SSE = "SSE via Envoy"
# The same SSE stream read by httpx: its response set-up and line iteration cost ~0.6 ms on
# the first event (measured), which is the client's, not Envoy's; shown beside, no target.
SSE_HTTPX = "SSE via Envoy, httpx client"
PATHS = (DIRECT, "gRPC via Envoy", "gRPC-Web via Envoy", SSE, SSE_HTTPX)
ADDED_TARGET_MS = 1.0
NOTES = (
    "offline responder paced at 40 tokens/s, first token after 300 ms (the streaming "
    "benchmark's settings); each path its own users, keys and connections",
    "lag = client receipt time - delta.emit_time_unix_nanos (same clock); TTFT lag = that of "
    "an answer's first delta; added by Envoy = the path's percentile - the direct gRPC one",
    "c=1: the paths interleaved turn by turn; c=50: 50 users per path at once, the paths "
    "one after another, after a discarded 50-stream warm-up round of every path",
    "the client is one Python process: SSE pays JSON parsing and gRPC-Web frame parsing in "
    "Python, native gRPC parses in C; that client cost is inside the added lag. "
    f"'{SSE}' reads the stream with h11 over an asyncio connection (a lean client, as curl or "
    f"a browser's EventSource would be); '{SSE_HTTPX}' reads the same stream with httpx, "
    "whose per-response set-up falls on the first event (no target: it is the client's cost)",
    "percentiles are nearest-rank: with fewer than 100 samples p99 is the maximum",
)

TurnRunner = Callable[[str, str], Awaitable[TurnResult]]


@dataclass
class PathResult:
    """The turns of one path at one concurrency."""

    turns: list[TurnResult] = field(default_factory=list)

    def lags(self) -> list[int]:
        return [lag for t in self.turns for lag in t.lags_ns]

    def first_lags(self) -> list[int]:
        return [t.first_lag_ns for t in self.turns if t.first_lag_ns is not None]


class _Events:
    """Collects one stream's events (kind, sequence, emit time) as they are received."""

    def __init__(self) -> None:
        self.result = TurnResult(sent_ns=time.time_ns())
        self.kinds: list[str] = []
        self.sequences: list[int] = []
        self.done: resources_pb2.TurnDone | None = None

    def add(self, kind: str, sequence: int = 0, emit_ns: int = 0) -> None:
        received = time.time_ns()
        self.kinds.append(kind)
        if kind == "delta":
            lag = received - emit_ns
            if self.result.first_lag_ns is None:
                self.result.first_lag_ns = lag
            self.result.lags_ns.append(lag)
            self.sequences.append(sequence)

    def finish(self, error: str | None = None) -> TurnResult:
        result = self.result
        result.error = error
        result.deltas = len(self.sequences)
        result.lost, result.reordered, result.violations = check_stream(
            self.kinds, self.sequences, self.done
        )
        if result.error is None and self.done is None:
            result.error = "stream ended without `done`"
        return result


async def _grpc_turn(
    stub: gateway_pb2_grpc.GatewayServiceAsyncStub, key: str, text: str
) -> TurnResult:
    events = _Events()
    call = stub.Chat(
        gateway_pb2.ChatRequest(text=text),
        metadata=(("authorization", f"Bearer {key}"),),
        timeout=CALL_TIMEOUT_SECONDS,
    )
    try:
        async for event in call:
            kind = str(event.WhichOneof("event"))
            events.add(kind, event.delta.sequence, event.delta.emit_time_unix_nanos)
            if kind == "done":
                events.done = event.done
    except grpc.aio.AioRpcError as error:
        return events.finish(f"{error.code().name}: {error.details()}")
    return events.finish()


async def _grpc_web_frames(response: httpx.Response) -> AsyncIterator[tuple[int, bytes]]:
    buffer = b""
    async for chunk in response.aiter_raw():
        buffer += chunk
        while len(buffer) >= 5:
            flags, length = struct.unpack_from(">BI", buffer)
            if len(buffer) < 5 + length:
                break
            yield flags, buffer[5 : 5 + length]
            buffer = buffer[5 + length :]


async def _grpc_web_turn(client: httpx.AsyncClient, url: str, key: str, text: str) -> TurnResult:
    events = _Events()
    headers = {
        "content-type": "application/grpc-web+proto",
        "x-grpc-web": "1",
        "authorization": f"Bearer {key}",
    }
    body = gateway_pb2.ChatRequest(text=text).SerializeToString()
    try:
        async with client.stream(
            "POST",
            f"{url}/chatplane.v1.GatewayService/Chat",
            headers=headers,
            content=struct.pack(">BI", 0, len(body)) + body,
        ) as response:
            async for flags, payload in _grpc_web_frames(response):
                if flags & 0x80:
                    continue  # trailers
                event = gateway_pb2.ChatResponse.FromString(payload)
                kind = str(event.WhichOneof("event"))
                events.add(kind, event.delta.sequence, event.delta.emit_time_unix_nanos)
                if kind == "done":
                    events.done = event.done
    except httpx.HTTPError as error:
        return events.finish(f"{type(error).__name__}: {error}")
    return events.finish()


def _sse_line(events: _Events, line: str) -> None:
    """One line of a Server-Sent Events stream of ChatResponse JSON."""
    if not line.startswith("data: "):
        return
    event = json.loads(line[6:])
    kind = next(iter(event))
    delta = event.get("delta", {})
    events.add(kind, int(delta.get("sequence", 0)), int(delta.get("emitTimeUnixNanos", 0)))
    if kind == "done":
        events.done = resources_pb2.TurnDone(
            delta_count=int(event["done"]["deltaCount"]),
            finish_reason=resources_pb2.FinishReason.Value(event["done"]["finishReason"]),
        )


async def _sse_turn_httpx(client: httpx.AsyncClient, url: str, key: str, text: str) -> TurnResult:
    events = _Events()
    try:
        async with client.stream(
            "POST",
            f"{url}/v1/chat",
            headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
            json={"text": text},
        ) as response:
            async for line in response.aiter_lines():
                _sse_line(events, line)
    except httpx.HTTPError as error:
        return events.finish(f"{type(error).__name__}: {error}")
    return events.finish()


async def _sse_turn(address: str, key: str, text: str) -> TurnResult:
    """One SSE turn on a connection of its own, the HTTP/1.1 framing done by h11."""
    events = _Events()
    host, port = address.rsplit(":", 1)
    body = json.dumps({"text": text}).encode()
    connection = h11.Connection(h11.CLIENT)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        request = h11.Request(
            method="POST",
            target="/v1/chat",
            headers=[
                ("host", address),
                ("authorization", f"Bearer {key}"),
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
                ("connection", "close"),
            ],
        )
        writer.write(connection.send(request) or b"")
        writer.write(connection.send(h11.Data(data=body)) or b"")
        writer.write(connection.send(h11.EndOfMessage()) or b"")
        await writer.drain()
        pending = b""
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Response) and event.status_code != 200:
                return events.finish(f"HTTP {event.status_code}")
            elif isinstance(event, h11.Data):
                pending += bytes(event.data)
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    _sse_line(events, line.decode())
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    except (OSError, h11.ProtocolError) as error:
        return events.finish(f"{type(error).__name__}: {error}")
    finally:
        writer.close()
    return events.finish()


@dataclass(frozen=True, slots=True)
class _SseUser:
    """A user reading SSE with the lean client (a connection per turn)."""

    address: str
    key: str

    async def __call__(self, _url: str, text: str) -> TurnResult:
        return await _sse_turn(self.address, self.key, text)


@dataclass
class _Clients:
    """Per path, one runner per user (each with its own key and connection)."""

    runners: dict[str, list[TurnRunner]] = field(default_factory=dict)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def close(self) -> None:
        for close in self.closers:
            await close()


@dataclass(frozen=True, slots=True)
class _GrpcUser:
    """A user calling over native gRPC (its own channel)."""

    stub: gateway_pb2_grpc.GatewayServiceAsyncStub
    key: str

    async def __call__(self, _url: str, text: str) -> TurnResult:
        return await _grpc_turn(self.stub, self.key, text)


@dataclass(frozen=True, slots=True)
class _HttpUser:
    """A user calling over HTTP/1.1 (its own httpx client): gRPC-Web or SSE."""

    turn: Callable[[httpx.AsyncClient, str, str, str], Awaitable[TurnResult]]
    http: httpx.AsyncClient
    key: str

    async def __call__(self, url: str, text: str) -> TurnResult:
        return await self.turn(self.http, url, self.key, text)


async def _clients(gateway: str, edge: str, keys: dict[str, list[str]]) -> _Clients:
    clients = _Clients()
    for path in PATHS:
        runners: list[TurnRunner] = []
        for key in keys[path]:
            if path in (DIRECT, "gRPC via Envoy"):
                channel = await user_channel(gateway if path == DIRECT else edge)
                clients.closers.append(channel.close)
                stub = gateway_pb2_grpc.GatewayServiceStub(channel)
                runners.append(_GrpcUser(stub, key))
            elif path == SSE:
                runners.append(_SseUser(edge, key))
            else:
                http = httpx.AsyncClient(timeout=CALL_TIMEOUT_SECONDS)
                clients.closers.append(http.aclose)
                turn = _grpc_web_turn if path == "gRPC-Web via Envoy" else _sse_turn_httpx
                runners.append(_HttpUser(turn, http, key))
        clients.runners[path] = runners
    return clients


async def _single(clients: _Clients, url: str, turns: int) -> dict[str, PathResult]:
    results = {path: PathResult() for path in PATHS}
    for turn in range(turns):
        for path in PATHS:
            runner = clients.runners[path][0]
            results[path].turns.append(await runner(url, QUESTIONS[turn % len(QUESTIONS)]))
    return results


async def _concurrent(clients: _Clients, url: str, users: int, turns: int) -> dict[str, PathResult]:
    results = {path: PathResult() for path in PATHS}

    async def user(runner: TurnRunner, index: int, into: PathResult) -> None:
        for turn in range(turns):
            into.turns.append(await runner(url, QUESTIONS[(index * 7 + turn) % len(QUESTIONS)]))

    for path in PATHS:
        await asyncio.sleep(1.0)  # let the log consumer catch up between paths
        runners = clients.runners[path][1 : users + 1]
        await asyncio.gather(*(user(r, i, results[path]) for i, r in enumerate(runners)))
    return results


async def run(options: Options) -> list[Row]:
    """Starts the stack with Envoy, warms every path up, measures c=1 then c=50."""
    single_turns, many_users, many_turns = (6, 50, 1) if options.quick else (20, 50, 2)
    progress(options, f"{NAME}: starting the stack with Envoy")
    async with running_stack(NAME, STACK_ENV, options, edge=True) as stack:
        info = stack.info()
        owners = [
            (f"edge-bench-{i % 10}", f"user-{p}-{i}") for p in range(len(PATHS)) for i in range(51)
        ]
        all_keys = await create_keys(stack, owners)
        keys = {path: all_keys[i * 51 : (i + 1) * 51] for i, path in enumerate(PATHS)}
        clients = await _clients(info.address("gateway"), info.address(EDGE), keys)
        url = f"http://{info.address(EDGE)}"
        try:
            progress(options, f"{NAME}: warm-up")
            await _single(clients, url, 2)
            progress(options, f"{NAME}: c=1")
            single = await _single(clients, url, single_turns)
            # The first 50-stream burst on a fresh stack is slower for whichever path goes
            # first (measured: ~140 ms TTFT lag for direct gRPC, <2 ms for the paths after it).
            progress(options, f"{NAME}: warm-up c={many_users}")
            await _concurrent(clients, url, many_users, 1)
            progress(options, f"{NAME}: c={many_users}")
            many = await _concurrent(clients, url, many_users, many_turns)
        finally:
            await clients.close()
    progress(options, f"{NAME}: done")
    return rows({"c=1": single, f"c={many_users}": many})


def _broken_streams(results: dict[str, PathResult], path: str) -> float:
    return float(sum(t.failed or bool(t.violations) or t.lost > 0 for t in results[path].turns))


def rows(results: dict[str, dict[str, PathResult]]) -> list[Row]:
    """Per path: failed streams, lag percentiles; per Envoy path: what it added (p50 target at
    c=1)."""
    columns = list(results)

    def per_column(
        value: Callable[[dict[str, PathResult]], float | None],
    ) -> dict[str, float | None]:
        return {column: value(results[column]) for column in columns}

    def lag(
        path: str, samples: Callable[[PathResult], list[int]], fraction: float
    ) -> Callable[[dict[str, PathResult]], float | None]:
        return lambda r: ns_to_ms(percentile(samples(r[path]), fraction))

    def added(
        path: str, samples: Callable[[PathResult], list[int]], fraction: float
    ) -> Callable[[dict[str, PathResult]], float | None]:
        def value(r: dict[str, PathResult]) -> float | None:
            mine, base = lag(path, samples, fraction)(r), lag(DIRECT, samples, fraction)(r)
            return None if mine is None or base is None else mine - base

        return value

    out: list[Row] = []
    for path in PATHS:
        out.append(
            Row(
                NAME,
                f"{path}: streams failed / contract violations",
                "",
                per_column(functools.partial(_broken_streams, path=path)),
                Target(0, op="=="),
                0,
            )
        )
    for title, samples in (("TTFT lag", PathResult.first_lags), ("per-token lag", PathResult.lags)):
        for fraction, name in ((0.5, "p50"), (0.99, "p99")):
            for path in PATHS:
                out.append(
                    Row(
                        NAME,
                        f"{title} {name}: {path}",
                        "ms",
                        per_column(lag(path, samples, fraction)),
                    )
                )
            for path in PATHS[1:]:
                target = (
                    Target(ADDED_TARGET_MS, "c=1") if name == "p50" and path != SSE_HTTPX else None
                )
                out.append(
                    Row(
                        NAME,
                        f"  added by Envoy, {title} {name}: {path}",
                        "ms",
                        per_column(added(path, samples, fraction)),
                        target,
                    )
                )
    out.append(
        Row(
            NAME,
            "turns per path",
            "",
            per_column(lambda r: float(len(r[DIRECT].turns))),
            precision=0,
        )
    )
    return out
