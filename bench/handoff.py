"""Handoff benchmark (docs/handoff.md), embedded profile: how fast an operator's reply reaches
the user's watch stream (PostReply → the message log → the Gateway's tail → the stream), how
fast a message in human mode is answered with the `handoff` event, and what the handoff check
adds to every turn of a continuing conversation (the GetHandoff call to Persistence)."""

from __future__ import annotations

import asyncio
import time

import grpc

from bench.harness import Options, create_keys, progress, running_stack, user_channel
from bench.report import Row, Target
from bench.stats import ns_to_ms, percentile
from chatplane.internal.v1 import handoff_pb2, identity_pb2
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import (
    admin_resources_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    operator_pb2,
    operator_pb2_grpc,
)

NAME = "handoff"
TITLE = "handoff: operator reply delivery and the handoff check (embedded profile, loopback)"
P50, P99 = "p50", "p99"
STACK_ENV = {
    "CHATPLANE_LLM_BACKEND": "offline",
    "CHATPLANE_OFFLINE_TOKENS_PER_SECOND": "500",
    "CHATPLANE_OFFLINE_FIRST_TOKEN_SECONDS": "0.02",
    # One user sends every call: the per-user rate limit is not what is measured.
    "CHATPLANE_RATE_LIMIT_PER_MINUTE": "1000000",
    "CHATPLANE_RATE_LIMIT_BURST": "100000",
}
NOTES = (
    "reply delivery = the watch stream's receipt of the reply - PostReply sent (one operator, "
    "one watching user, one at a time): two Persistence reads, one log append of two records, "
    "the Gateway's tail of the log's PostgreSQL table (woken by NOTIFY), the stream",
    "human-mode Chat = the `handoff` event's receipt - Chat sent: auth, BeginTurn, GetHandoff, "
    "the user message appended, ReleaseTurn",
    "GetHandoff = one call from a client on loopback, the work every turn of a continuing "
    "conversation now does before the Agent is called",
    "percentiles are nearest-rank; on the shared 2-core machine p99 follows the load",
)


def _row(metric: str, samples: list[int], target: Target) -> Row:
    return Row(
        NAME,
        metric,
        "ms",
        {P50: ns_to_ms(percentile(samples, 0.5)), P99: ns_to_ms(percentile(samples, 0.99))},
        target,
    )


async def run(options: Options) -> list[Row]:
    """Runs the three measurements on one stack."""
    count = 20 if options.quick else 200
    async with running_stack(NAME, STACK_ENV, options) as stack:
        (user_key,) = await create_keys(stack, [("bench", "u")])
        async with stack.channel("persistence") as internal:
            operator_key = (
                await PersistenceClient(internal).identity.CreateApiKey(
                    identity_pb2.CreateApiKeyRequest(
                        owner=admin_resources_pb2.Owner(tenant_id="bench", user_id="op"),
                        roles=["operator"],
                    ),
                    timeout=10,
                )
            ).api_key
        channel = await user_channel(stack.info().address("gateway"))
        try:
            persistence_address = stack.info().address("persistence")
            return await _measure(
                channel, persistence_address, user_key, operator_key, count, options
            )
        finally:
            await channel.close()


async def _measure(
    channel: grpc.aio.Channel,
    persistence_address: str,
    user_key: str,
    operator_key: str,
    count: int,
    options: Options,
) -> list[Row]:
    gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
    operator = operator_pb2_grpc.OperatorServiceStub(channel)
    user_md = (("authorization", f"Bearer {user_key}"),)
    operator_md = (("authorization", f"Bearer {operator_key}"),)

    conversation_id = ""
    async for event in gateway.Chat(gateway_pb2.ChatRequest(text="hello"), metadata=user_md):
        if event.WhichOneof("event") == "started":
            conversation_id = event.started.conversation_id
    check: list[int] = []
    async with grpc.aio.insecure_channel(persistence_address) as internal:
        persistence = PersistenceClient(internal)
        request = handoff_pb2.GetHandoffRequest(
            owner=admin_resources_pb2.Owner(tenant_id="bench", user_id="u"),
            conversation_id=conversation_id,
        )
        for _ in range(count):
            began = time.perf_counter_ns()
            await persistence.handoff.GetHandoff(request, timeout=10)
            check.append(time.perf_counter_ns() - began)
    progress(options, f"{NAME}: GetHandoff measured")

    await gateway.RequestHandoff(
        gateway_pb2.RequestHandoffRequest(conversation_id=conversation_id), metadata=user_md
    )
    human: list[int] = []
    for index in range(count):
        began = time.perf_counter_ns()
        async for event in gateway.Chat(
            gateway_pb2.ChatRequest(conversation_id=conversation_id, text=f"still there {index}?"),
            metadata=user_md,
        ):
            assert event.WhichOneof("event") == "handoff"
            human.append(time.perf_counter_ns() - began)
    progress(options, f"{NAME}: human-mode chat measured")

    watch = gateway.WatchConversation(
        gateway_pb2.WatchConversationRequest(conversation_id=conversation_id), metadata=user_md
    )
    await watch.read()  # the current state
    delivery: list[int] = []
    for index in range(count):
        began = time.perf_counter_ns()
        await operator.PostReply(
            operator_pb2.PostReplyRequest(conversation_id=conversation_id, text=f"reply {index}"),
            metadata=operator_md,
        )
        event = await asyncio.wait_for(watch.read(), 10)
        assert isinstance(event, gateway_pb2.WatchConversationResponse)
        delivery.append(time.perf_counter_ns() - began)
    watch.cancel()
    progress(options, f"{NAME}: reply delivery measured")
    return [
        _row("operator reply → user's watch stream", delivery, Target(100.0, P99)),
        _row("Chat in human mode → `handoff` event", human, Target(100.0, P99)),
        _row("GetHandoff (added to each continuing turn)", check, Target(2.0, P50)),
    ]
