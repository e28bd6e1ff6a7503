"""What the edge tests (and other tests that go through Envoy) share: a stack with Envoy in front
of the Gateway, a chat over Server-Sent Events read by `curl -N`, and gRPC-Web framing done by
hand as the protocol specifies (a 5-byte prefix: flags, big-endian length; flag 0x80 marks the
trailers frame, whose payload is HTTP/1-style `name: value` lines)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import time
import urllib.request
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chatplane.launcher import Stack
from chatplane.launcher.stack import EDGE
from chatplane.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration.stack_client import create_key, poll, running_stack

ALLOWED_ORIGIN = "https://chat.example.com"
# Paced so that an answer (~60-90 words) takes about a second: streaming is observable.
EDGE_PACE = {
    "CHATPLANE_OFFLINE_TOKENS_PER_SECOND": "100",
    "CHATPLANE_OFFLINE_FIRST_TOKEN_SECONDS": "0.02",
    "CHATPLANE_RATE_LIMIT_PER_MINUTE": "600",
    "CHATPLANE_RATE_LIMIT_BURST": "30",
    "CHATPLANE_EDGE_ALLOWED_ORIGINS": ALLOWED_ORIGIN,
}
CURL_TIMEOUT_SECONDS = 60.0

GRPC_WEB_TRAILERS_FLAG = 0x80


@dataclass(frozen=True, slots=True)
class EdgeStack:
    """A running stack with Envoy: where to reach it and a key to call it with."""

    stack: Stack
    url: str  # http://127.0.0.1:<edge port>: REST/JSON + SSE, gRPC-Web, native gRPC (h2c)
    edge_address: str  # 127.0.0.1:<edge port>, for grpc channels
    gateway_address: str  # the Gateway directly (no Envoy)
    admin_address: str  # Envoy's admin interface (127.0.0.1 only)
    api_key: str

    async def new_key(self, tenant: str, user: str) -> str:
        """Another API key (another principal, with its own Gateway rate limit)."""
        return await create_key(self.stack, tenant, user)


@contextlib.asynccontextmanager
async def running_edge_stack(
    data_dir: Path, env: Mapping[str, str] | None = None
) -> AsyncIterator[EdgeStack]:
    """The four services and Envoy on free loopback ports; `env` over EDGE_PACE."""
    async with running_stack(data_dir, {**EDGE_PACE, **(env or {})}, edge=True) as stack:
        info = stack.info()
        admin_port = stack.services[EDGE].ready_event["admin_port"]
        yield EdgeStack(
            stack=stack,
            url=f"http://{info.address(EDGE)}",
            edge_address=info.address(EDGE),
            gateway_address=info.address("gateway"),
            admin_address=f"127.0.0.1:{admin_port}",
            api_key=await create_key(stack, "edge-tenant", "edge-user"),
        )


@dataclass
class SseStream:
    """What `curl -N` printed: the status, the headers and each `data:` event with the time
    (time.time_ns()) the line arrived."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    receipt_ns: list[int] = field(default_factory=list)
    other_lines: list[str] = field(default_factory=list)

    @property
    def kinds(self) -> list[str]:
        return [next(iter(e)) for e in self.events]

    @property
    def text(self) -> str:
        return "".join(e["delta"]["text"] for e in self.events if "delta" in e)


async def curl_sse(
    url: str,
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    timeout: float = CURL_TIMEOUT_SECONDS,
) -> SseStream:
    """POSTs `body` as JSON with `curl -N` (no buffering) and reads the SSE stream line by line
    as it arrives."""
    args = ["curl", "-sS", "-N", "-i", "--max-time", f"{timeout:g}", "-X", "POST"]
    for name, value in {"content-type": "application/json", **headers}.items():
        args += ["-H", f"{name}: {value}"]
    args += ["--data-binary", json.dumps(body), url]
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    stream = SseStream()
    in_headers = True
    async with asyncio.timeout(timeout + 5):
        while line_bytes := await process.stdout.readline():
            received = time.time_ns()
            line = line_bytes.decode().rstrip("\r\n")
            if in_headers:
                if line.startswith("HTTP/"):
                    stream.status = int(line.split()[1])
                elif not line:
                    in_headers = False
                else:
                    name, _, value = line.partition(":")
                    stream.headers[name.strip().lower()] = value.strip()
            elif line.startswith("data: "):
                stream.events.append(json.loads(line.removeprefix("data: ")))
                stream.receipt_ns.append(received)
            elif line:
                stream.other_lines.append(line)
        code = await process.wait()
    assert code == 0, (await process.stderr.read()).decode() if process.stderr else code
    return stream


def grpc_web_frame(message: bytes, flags: int = 0) -> bytes:
    """One gRPC-Web frame: flags byte, 4-byte big-endian length, payload."""
    return struct.pack(">BI", flags, len(message)) + message


@dataclass
class GrpcWebResponse:
    """A gRPC-Web response body split into its message frames and its trailers."""

    messages: list[bytes] = field(default_factory=list)
    trailers: dict[str, str] = field(default_factory=dict)


def parse_grpc_web(body: bytes) -> GrpcWebResponse:
    """Splits a whole gRPC-Web response body into frames; raises on a truncated frame."""
    response = GrpcWebResponse()
    offset = 0
    while offset < len(body):
        flags, length = struct.unpack_from(">BI", body, offset)
        payload = body[offset + 5 : offset + 5 + length]
        if len(payload) != length:
            raise ValueError(f"truncated gRPC-Web frame at {offset}")
        offset += 5 + length
        if flags & GRPC_WEB_TRAILERS_FLAG:
            for line in payload.decode().split("\r\n"):
                if line:
                    name, _, value = line.partition(":")
                    response.trailers[name.strip().lower()] = value.strip()
        else:
            response.messages.append(payload)
    return response


async def wait_healthy(edge: EdgeStack) -> None:
    """Envoy's admin says LIVE and the Gateway answers its health check directly."""

    def envoy_ready() -> bytes:
        with urllib.request.urlopen(f"http://{edge.admin_address}/ready", timeout=2) as r:
            return bytes(r.read())

    assert (await asyncio.to_thread(envoy_ready)).strip() == b"LIVE"
    async with grpc.aio.insecure_channel(edge.gateway_address) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


@dataclass
class GrpcWebStream:
    """A gRPC-Web Chat as received: the HTTP status and headers, each event with the time its
    frame arrived, and the trailers."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    events: list[gateway_pb2.ChatResponse] = field(default_factory=list)
    receipt_ns: list[int] = field(default_factory=list)
    trailers: dict[str, str] = field(default_factory=dict)

    @property
    def kinds(self) -> list[str]:
        return [str(e.WhichOneof("event")) for e in self.events]

    @property
    def text(self) -> str:
        return "".join(e.delta.text for e in self.events if e.WhichOneof("event") == "delta")

    @property
    def grpc_status(self) -> str:
        """grpc-status from the trailers frame, or from the headers of a trailers-only reply."""
        return self.trailers.get("grpc-status", self.headers.get("grpc-status", ""))


GRPC_WEB_HEADERS = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}


async def grpc_web_chat(
    client: httpx.AsyncClient, url: str, request: gateway_pb2.ChatRequest, api_key: str
) -> GrpcWebStream:
    """GatewayService.Chat over gRPC-Web (HTTP/1.1), frames parsed as they arrive."""
    stream = GrpcWebStream()
    buffer = b""
    async with client.stream(
        "POST",
        f"{url}/chatplane.v1.GatewayService/Chat",
        headers={**GRPC_WEB_HEADERS, "authorization": f"Bearer {api_key}"},
        content=grpc_web_frame(request.SerializeToString()),
    ) as response:
        stream.status = response.status_code
        stream.headers = {k.lower(): v for k, v in response.headers.items()}
        async for chunk in response.aiter_raw():
            received = time.time_ns()
            buffer += chunk
            while len(buffer) >= 5:
                flags, length = struct.unpack_from(">BI", buffer)
                if len(buffer) < 5 + length:
                    break
                payload, buffer = buffer[5 : 5 + length], buffer[5 + length :]
                if flags & GRPC_WEB_TRAILERS_FLAG:
                    stream.trailers = parse_grpc_web(grpc_web_frame(payload, flags)).trailers
                else:
                    stream.events.append(gateway_pb2.ChatResponse.FromString(payload))
                    stream.receipt_ns.append(received)
    assert buffer == b"", "the response ended inside a frame"
    return stream


async def native_chat(
    address: str, request: gateway_pb2.ChatRequest, api_key: str
) -> list[gateway_pb2.ChatResponse]:
    """GatewayService.Chat over native gRPC (HTTP/2) to `address`."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = gateway_pb2_grpc.GatewayServiceStub(channel).Chat(
            request, metadata=(("authorization", f"Bearer {api_key}"),), timeout=60
        )
        return [event async for event in call]


async def access_log_entry(edge: EdgeStack, request_id: str) -> dict[str, Any]:
    """Envoy's access-log line of one request (flushed to the file within half a second)."""
    path = edge.stack.data_dir / "logs" / "edge-access.log"

    async def entry() -> dict[str, Any] | None:
        lines = path.read_text().splitlines() if path.exists() else []
        for line in reversed(lines):
            parsed = json.loads(line)
            if parsed.get("request_id") == request_id:
                return dict(parsed)
        return None

    found: dict[str, Any] = await poll(entry, timeout=10)
    return found
