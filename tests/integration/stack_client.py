"""What the integration tests share: a running stack and a Gateway client bound to a key."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.rpc import error_details_pb2, status_pb2

from chatplane.internal.v1 import identity_pb2, memory_pb2, memory_pb2_grpc
from chatplane.launcher import Stack
from chatplane.launcher.postgres_server import PostgresServer
from chatplane.launcher.stack import POSTGRES_DIR, running_postgres_dsn
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import admin_resources_pb2, gateway_pb2, gateway_pb2_grpc

FAST_PACE = {
    "CHATPLANE_OFFLINE_TOKENS_PER_SECOND": "500",
    "CHATPLANE_OFFLINE_FIRST_TOKEN_SECONDS": "0.02",
}
SLOW_PACE = {
    "CHATPLANE_OFFLINE_TOKENS_PER_SECOND": "10",
    "CHATPLANE_OFFLINE_FIRST_TOKEN_SECONDS": "0.05",
}


@contextlib.asynccontextmanager
async def running_stack(
    data_dir: Path,
    env: Mapping[str, str],
    *,
    edge: bool = False,
    web: bool = False,
    tls_dir: Path | None = None,
) -> AsyncIterator[Stack]:
    """The four services on free ports with `env` on top of this process's environment; with
    `edge`, also Envoy in front of the Gateway (`stack.info().address("edge")`); with `web`,
    the web chat's static server; with `tls_dir`, on mutual TLS with those certificates."""
    stack = Stack(
        data_dir=data_dir,
        ports=dict.fromkeys(("gateway", "agent", "memory", "persistence", "edge", "webui"), 0),
        env={**os.environ, "CHATPLANE_LLM_BACKEND": "offline", **env},
        edge=edge,
        web=web,
        tls_dir=tls_dir,
    )
    await stack.start()
    try:
        yield stack
    finally:
        await stack.stop(timeout=10)


def store_dsn(data_dir: Path) -> str:
    """The DSN of the running stack's own PostgreSQL (the embedded profile's, in the data
    dir), for reading its tables around the services."""
    dsn = running_postgres_dsn(Path(data_dir))
    assert dsn, f"the PostgreSQL of {data_dir} is not running"
    return dsn


@contextlib.asynccontextmanager
async def stack_database(data_dir: Path) -> AsyncIterator[str]:
    """The DSN of the stack's own PostgreSQL: the running server, or (the stack being down)
    the server started for the caller and stopped after."""
    server = PostgresServer(Path(data_dir) / POSTGRES_DIR)
    running = bool(server.port)
    dsn = server.dsn() if running else await asyncio.to_thread(server.start)
    try:
        yield dsn
    finally:
        if not running:
            await asyncio.to_thread(server.stop)


@dataclass
class Turn:
    """The events of one Chat call, split by kind."""

    started: gateway_pb2.ChatResponse | None = None
    deltas: list[gateway_pb2.ChatResponse] = field(default_factory=list)
    citations: list[gateway_pb2.ChatResponse] = field(default_factory=list)
    usage: gateway_pb2.ChatResponse | None = None
    done: gateway_pb2.ChatResponse | None = None
    kinds: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(d.delta.text for d in self.deltas)

    def add(self, event: gateway_pb2.ChatResponse) -> None:
        kind = event.WhichOneof("event")
        assert kind is not None
        self.kinds.append(kind)
        if kind == "started":
            self.started = event
        elif kind == "delta":
            self.deltas.append(event)
        elif kind == "citation":
            self.citations.append(event)
        elif kind == "usage":
            self.usage = event
        elif kind == "done":
            self.done = event


class Client:
    """A Gateway client authenticated with one API key."""

    def __init__(self, channel: grpc.aio.Channel, api_key: str) -> None:
        self.stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        self.metadata = (("authorization", f"Bearer {api_key}"),)

    def chat_call(
        self, text: str, conversation_id: str = "", client_message_id: str = ""
    ) -> grpc.aio.UnaryStreamCall[gateway_pb2.ChatRequest, gateway_pb2.ChatResponse]:
        request = gateway_pb2.ChatRequest(
            conversation_id=conversation_id, text=text, client_message_id=client_message_id
        )
        return self.stub.Chat(request, metadata=self.metadata, timeout=60)

    async def chat(self, text: str, conversation_id: str = "", client_message_id: str = "") -> Turn:
        turn = Turn()
        async for event in self.chat_call(text, conversation_id, client_message_id):
            turn.add(event)
        return turn


async def create_key(stack: Stack, tenant: str, user: str, roles: tuple[str, ...] = ()) -> str:
    """A new API key for tenant/user (roles: default chat), made through Persistence
    (with the client certificate on a mutual-TLS stack)."""
    async with stack.channel("persistence") as channel:
        response = await PersistenceClient(channel).identity.CreateApiKey(
            identity_pb2.CreateApiKeyRequest(
                owner=admin_resources_pb2.Owner(tenant_id=tenant, user_id=user), roles=roles
            ),
            timeout=10,
        )
    return response.api_key


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def status_details(error: grpc.aio.AioRpcError) -> list[object]:
    """The google.rpc details of a failed call, unpacked."""
    raw = [v for k, v in error.trailing_metadata() or () if k == "grpc-status-details-bin"]
    assert raw, "error carries no google.rpc.Status"
    status = status_pb2.Status.FromString(raw[0])  # type: ignore[arg-type]
    assert status.code == error.code().value[0]
    unpacked: list[object] = []
    for detail in status.details:
        for kind in (
            error_details_pb2.BadRequest,
            error_details_pb2.RetryInfo,
            error_details_pb2.RequestInfo,
        ):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                unpacked.append(message)
    return unpacked


async def poll(predicate_coro, timeout: float = 10.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Awaits `predicate_coro()` until it returns a truthy value (returned) or times out."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await predicate_coro()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def memory_recalls(
    stack: Stack, tenant: str, user: str, query: str, message_id: str, *, top_k: int = 10
) -> bool:
    """MemoryService's recall of `query` for the user holds `message_id`. Asked of Memory
    directly: a probe chat would itself be indexed, crowding out what it looks for, and would
    spend the rate limit. UNAVAILABLE (Memory still starting) counts as not yet."""
    async with grpc.aio.insecure_channel(stack.info().address("memory")) as memory_channel:
        try:
            recall = await memory_pb2_grpc.MemoryServiceStub(memory_channel).Recall(
                memory_pb2.RecallRequest(tenant_id=tenant, user_id=user, query=query, top_k=top_k),
                timeout=10,
            )
        except grpc.aio.AioRpcError as error:
            assert error.code() is grpc.StatusCode.UNAVAILABLE, error
            return False
    return message_id in {item.citation.source_id for item in recall.items}


async def wait_until_indexed(
    stack: Stack, tenant: str, user: str, query: str, message_id: str, *, timeout: float = 30
) -> None:
    """Waits until Memory has indexed the message: it indexes finished turns from the message
    log in batches, shortly after `done`, so recall of a turn is eventually consistent."""
    await poll(lambda: memory_recalls(stack, tenant, user, query, message_id), timeout=timeout)
