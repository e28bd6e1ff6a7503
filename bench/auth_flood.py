"""auth_flood benchmark: a flood of bad credentials against the Gateway (embedded profile,
loopback). Each call presents an API key with a fresh random key id (so every one misses the
key cache and is looked up in the system of record) and is refused UNAUTHENTICATED; each
refusal is one `auth.failure` audit record, appended by the Gateway in batches. Measured: the
refusal rate and latency, how long the audit chain takes to hold every refusal after the
last one, how many were dropped, whether the chain verifies, and what a legitimate user's
calls cost meanwhile (against the same calls on the idle stack)."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc

from bench.harness import Options, create_keys, progress, running_stack, user_channel
from bench.report import Row, Target
from bench.stats import ns_to_ms, percentile
from chatplane import audit
from chatplane.audit.protos import head_from_proto, record_from_proto
from chatplane.internal.v1 import audit_pb2
from chatplane.launcher import Stack
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import gateway_pb2, gateway_pb2_grpc

NAME = "auth_flood"
TITLE = "auth_flood: bad credentials at full speed; audit of every refusal (embedded, loopback)"
CONCURRENCY = 32
NOTES = (
    f"{CONCURRENCY} concurrent callers on one connection, each refused call with a new random "
    "key id (a key-cache miss: one GetApiKey at Persistence per call); the Gateway's audit "
    "defaults: batches of 500 every 0.2 s, queue of 10,000",
    "legit = one user's ListConversations with a valid key, one at a time, alone and during "
    "the flood",
    "chain drain = last refusal answered -> audit head holds every refusal",
)
STACK_ENV = {
    "CHATPLANE_LLM_BACKEND": "offline",
    "CHATPLANE_RATE_LIMIT_PER_MINUTE": "600000",
    "CHATPLANE_RATE_LIMIT_BURST": "10000",
}


async def _legit(
    stub: gateway_pb2_grpc.GatewayServiceStub, key: str, stop: asyncio.Event
) -> list[int]:
    samples: list[int] = []
    metadata = (("authorization", f"Bearer {key}"),)
    while not stop.is_set():
        began = time.perf_counter_ns()
        await stub.ListConversations(gateway_pb2.ListConversationsRequest(), metadata=metadata)
        samples.append(time.perf_counter_ns() - began)
        await asyncio.sleep(0.01)
    return samples


async def _flood(stub: gateway_pb2_grpc.GatewayServiceStub, total: int) -> list[int]:
    latencies: list[int] = []
    remaining = iter(range(total))

    async def caller() -> None:
        for _ in remaining:
            metadata = (("authorization", f"Bearer cp_{uuid.uuid4()}_{'0' * 64}"),)
            began = time.perf_counter_ns()
            try:
                await stub.ListConversations(
                    gateway_pb2.ListConversationsRequest(), metadata=metadata
                )
            except grpc.aio.AioRpcError as error:
                assert error.code() is grpc.StatusCode.UNAUTHENTICATED, error
            latencies.append(time.perf_counter_ns() - began)

    await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
    return latencies


async def _chain(stack: Stack) -> tuple[int, int, bool]:
    """(auth failures, dropped, whether the chain verifies)."""
    verifier = audit.ChainVerifier()
    failures = dropped = 0
    async with stack.channel("persistence") as channel:
        stub = PersistenceClient(channel)
        after, head = 0, None
        while True:
            page = await stub.audit.ListAuditRecords(
                audit_pb2.ListAuditRecordsRequest(after_seq=after, page_size=1000), timeout=30
            )
            head = head or head_from_proto(page.head)
            records = [record_from_proto(r) for r in page.records if r.seq <= head.seq]
            verifier.feed(records)
            for record in records:
                if record.event.action == audit.AUTH_FAILURE:
                    failures += 1
                elif record.event.action == "audit.dropped":
                    dropped += int(record.event.detail.split(" ", 1)[0])
            if len(page.records) < 1000 or not records:
                break
            after = records[-1].seq
    return failures, dropped, verifier.finish(head).ok


async def _head(stack: Stack) -> int:
    async with stack.channel("persistence") as channel:
        page = await PersistenceClient(channel).audit.ListAuditRecords(
            audit_pb2.ListAuditRecordsRequest(page_size=1), timeout=10
        )
    return page.head.seq


async def run(options: Options) -> list[Row]:
    total = 1000 if options.quick else 10_000
    async with running_stack(NAME, STACK_ENV, options) as stack:
        (key,) = await create_keys(stack, [("bench-flood", "legit")])
        channel = await user_channel(stack.info().address("gateway"))
        try:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            stop = asyncio.Event()
            idle_task = asyncio.create_task(_legit(stub, key, stop))
            await asyncio.sleep(3)
            stop.set()
            idle = await idle_task
            base = await _head(stack)
            progress(options, f"{NAME}: {total} bad credentials")
            stop = asyncio.Event()
            during_task = asyncio.create_task(_legit(stub, key, stop))
            began = time.monotonic()
            refused = await _flood(stub, total)
            flood_seconds = time.monotonic() - began
            stop.set()
            during = await during_task
            ended = time.monotonic()
            for _ in range(3000):  # at most 60 s
                if await _head(stack) >= base + total:
                    break
                await asyncio.sleep(0.02)
            drain = time.monotonic() - ended
            failures, dropped, verified = await _chain(stack)
        finally:
            await channel.close()
    column = "value"
    return [
        Row(NAME, "refused calls", "/s", {column: total / flood_seconds}, precision=0),
        Row(NAME, "refusal latency p50", "ms", {column: ns_to_ms(percentile(refused, 0.5))}),
        Row(NAME, "refusal latency p99", "ms", {column: ns_to_ms(percentile(refused, 0.99))}),
        Row(NAME, "auth.failure records chained", "", {column: float(failures)}, precision=0),
        Row(
            NAME,
            "refusals not chained (dropped, counted)",
            "",
            {column: float(total - failures)},
            Target(0),
            precision=0,
        ),
        Row(NAME, "dropped per audit.dropped records", "", {column: float(dropped)}, precision=0),
        Row(NAME, "chain drain after the flood", "s", {column: drain}),
        Row(NAME, "chain verifies", "1=yes", {column: float(verified)}, Target(1, op="=="), 0),
        Row(NAME, "legit call p99, idle", "ms", {column: ns_to_ms(percentile(idle, 0.99))}),
        Row(
            NAME, "legit call p99, during flood", "ms", {column: ns_to_ms(percentile(during, 0.99))}
        ),
    ]
