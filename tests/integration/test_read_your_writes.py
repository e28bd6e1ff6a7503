"""Read-your-writes with `done` at the log's acknowledgement (docs/decisions.md): a follow-up
sent the moment `done` arrives sees the previous turn in its prompt (the recent turns, read
from Persistence, which waits for a turn still on its way from the log), and memory's recall
finds the turn once Memory has indexed it from the log. On the embedded profile (the log in
PostgreSQL) and on the cluster profile (Kafka, OpenSearch)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import grpc
import pytest

from chatplane.internal.v1 import memory_pb2, memory_pb2_grpc
from chatplane.launcher import Stack
from tests.engine_processes import Engines
from tests.integration.stack_client import FAST_PACE, Client, create_key, poll, running_stack

# Persistence stores a lone turn only when its batch wait ends: half a second here, so a
# follow-up that did not wait for it would miss the previous turn every time.
ENV = {
    **FAST_PACE,
    "CHATPLANE_BATCH_MAX_WAIT_SECONDS": "0.5",
    "CHATPLANE_RATE_LIMIT_BURST": "1000",
}
FOLLOW_UPS = 3


async def until_done(client: Client, text: str, conversation_id: str = "") -> tuple[str, str]:
    """Sends a message and returns (conversation id, the answer so far) as soon as `done`
    arrives, without waiting for the stream to end."""
    answer: list[str] = []
    started = None
    call = client.chat_call(text, conversation_id)
    async for event in call:
        kind = event.WhichOneof("event")
        if kind == "started":
            started = event.started
        elif kind == "delta":
            answer.append(event.delta.text)
        elif kind == "done":
            break
    else:
        raise AssertionError("the stream ended without done")
    call.cancel()
    assert started is not None
    return started.conversation_id, "".join(answer)


async def follow_ups_see_the_previous_turn(stack: Stack) -> None:
    tenant, user = f"t-{uuid.uuid4().hex[:8]}", "u"
    async with grpc.aio.insecure_channel(stack.info().address("gateway")) as channel:
        client = Client(channel, await create_key(stack, tenant, user))
        word = f"zebra{uuid.uuid4().hex[:6]}"
        conversation_id, _ = await until_done(client, f"My secret word is {word}.")
        previous = f"My secret word is {word}."
        for round_ in range(FOLLOW_UPS):
            started = time.monotonic()
            question = f"Question {round_}: what did I say before?"
            conversation_id, answer = await until_done(client, question, conversation_id)
            assert time.monotonic() - started < 10
            # The offline responder lists the recent turns it was given.
            assert "Earlier in this conversation:" in answer, answer
            assert f"user: {previous}" in answer, answer
            previous = question
    async with grpc.aio.insecure_channel(stack.info().address("memory")) as channel:
        memory = memory_pb2_grpc.MemoryServiceStub(channel)

        async def recalled() -> bool:
            response = await memory.Recall(
                memory_pb2.RecallRequest(
                    tenant_id=tenant, user_id=user, query=f"secret word {word}", top_k=5
                ),
                timeout=10,
            )
            return any(word in item.text for item in response.items)

        await poll(recalled, timeout=30)


async def test_a_follow_up_at_done_sees_the_previous_turn_embedded(tmp_path: Path) -> None:
    async with running_stack(tmp_path, ENV) as stack:
        await follow_ups_see_the_previous_turn(stack)


@pytest.mark.usefixtures("engines")
async def test_a_follow_up_at_done_sees_the_previous_turn_on_kafka(
    engines: Engines, postgres_database: str, tmp_path: Path
) -> None:
    env = {
        **ENV,
        **engines.env,
        "CHATPLANE_PROFILE": "cluster",
        "CHATPLANE_POSTGRES_DSN": postgres_database,
        "CHATPLANE_OPENSEARCH_INDEX": f"ryw-{uuid.uuid4().hex[:8]}",
    }
    async with running_stack(tmp_path, env) as stack:
        await follow_ups_see_the_previous_turn(stack)
