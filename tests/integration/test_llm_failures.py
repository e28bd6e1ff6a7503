"""Claude through the real services and the real SDKs, against the LLM emulator: what is sent,
usage with the prompt cache, the key kept out of logs, and every provider failure of the
failure policy (docs/llm.md): retry-after, fallback, errors before and after the first token,
stalls, cancellation and the circuit breaker."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2

from chatplane.agent.prompt import SYSTEM_PROMPT
from chatplane.launcher import Stack
from chatplane.llm_emulator.process import EmulatorProcess, running_emulator
from chatplane.v1 import gateway_pb2, resources_pb2
from tests.integration.stack_client import (
    Client,
    Turn,
    create_key,
    poll,
    running_stack,
    status_details,
    unique,
    wait_until_indexed,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

PRIMARY = "claude-primary"
FALLBACK = "llama-fallback"
API_KEY = f"sk-emulator-{uuid.uuid4().hex}"
TOKENS = 12
STALL_SECONDS = 1.0


@dataclass
class Rig:
    """The emulator and a stack whose Agent answers with Claude through it."""

    emulator: EmulatorProcess
    stack: Stack
    channel: grpc.aio.Channel

    async def client(self) -> Client:
        return Client(self.channel, await create_key(self.stack, unique("t"), "u"))

    async def requests(self, since: int = 0) -> list[dict[str, Any]]:
        return (await self.emulator.requests())[since:]


def llm_env(emulator: EmulatorProcess, **extra: str) -> dict[str, str]:
    return {
        # Only the key and the base URL: `auto` picks Claude because a key is set.
        "CHATPLANE_LLM_BACKEND": "auto",
        "ANTHROPIC_API_KEY": API_KEY,
        "ANTHROPIC_BASE_URL": emulator.url,
        "CHATPLANE_LLM_MODEL": PRIMARY,
        "CHATPLANE_LLM_STALL_TIMEOUT_SECONDS": str(STALL_SECONDS),
        **extra,
    }


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    async with running_emulator("--tokens", str(TOKENS), "--api-key", API_KEY) as emulator:
        env = llm_env(
            emulator,
            CHATPLANE_LLM_FALLBACKS=json.dumps([f"openai_compatible:{FALLBACK}"]),
            CHATPLANE_OPENAI_BASE_URL=f"{emulator.url}/v1",
            CHATPLANE_OPENAI_API_KEY=API_KEY,
        )
        async with (
            running_stack(tmp_path_factory.mktemp("llm"), env) as stack,
            grpc.aio.insecure_channel(stack.info().address("gateway")) as channel,
        ):
            yield Rig(emulator, stack, channel)


@pytest_asyncio.fixture(loop_scope="module", autouse=True)
async def no_rules(rig: Rig) -> None:
    await rig.emulator.set_rules([])


async def history(client: Client, conversation_id: str) -> list[resources_pb2.Message]:
    response = await client.stub.GetConversation(
        gateway_pb2.GetConversationRequest(conversation_id=conversation_id),
        metadata=client.metadata,
    )
    return list(response.messages)


async def stored_answer(client: Client, conversation_id: str) -> resources_pb2.Message:
    async def answer() -> resources_pb2.Message | None:
        messages = await history(client, conversation_id)
        answers = [m for m in messages if m.role == resources_pb2.ROLE_ASSISTANT]
        return answers[0] if answers else None

    stored: resources_pb2.Message = await poll(answer, timeout=10)
    return stored


async def chat_until_error(client: Client, text: str) -> tuple[Turn, grpc.aio.AioRpcError]:
    turn = Turn()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for event in client.chat_call(text):
            turn.add(event)
    return turn, raised.value


async def test_claude_answers_when_a_key_is_set(rig: Rig) -> None:
    ready = rig.stack.services["agent"].ready_event
    assert ready["model"] == PRIMARY and ready["fallbacks"] == [FALLBACK]
    usages = []
    for _ in range(2):
        # A new tenant each time: nothing recalled, so the cached prefix is the same.
        client = await rig.client()
        turn = await client.chat("What is the capital of France?")
        assert turn.started is not None and turn.done is not None and turn.usage is not None
        assert turn.started.started.model == PRIMARY == turn.done.done.model
        assert len(turn.text.split()) == TOKENS
        assert turn.done.done.finish_reason == resources_pb2.FINISH_REASON_STOP
        usages.append(turn.usage.usage)
    assert usages[0].output_tokens == TOKENS and usages[0].input_tokens > 0
    assert usages[0].cache_creation_input_tokens > 0 == usages[0].cache_read_input_tokens
    assert usages[1].cache_read_input_tokens == usages[0].cache_creation_input_tokens

    sent = (await rig.requests())[-1]
    assert sent["api_key"] == API_KEY and sent["model"] == PRIMARY and sent["stream"]
    body = sent["body"]
    assert body["system"][0]["text"] == SYSTEM_PROMPT
    assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert body["messages"][-1] == {"role": "user", "content": "What is the capital of France?"}
    assert body["max_tokens"] == 1024
    # The key never reaches a log.
    logs = list((rig.stack.data_dir / "logs").glob("*.log"))
    assert logs and all(API_KEY not in path.read_text() for path in logs)


async def test_recalled_passages_are_fenced_as_data(rig: Rig) -> None:
    tenant = unique("t")
    client = Client(rig.channel, await create_key(rig.stack, tenant, "u"))
    first = await client.chat("My cat is called Bartholomew")
    assert first.started is not None
    conversation = first.started.started.conversation_id
    # Memory indexes the turn from the message log, shortly after `done`.
    await wait_until_indexed(
        rig.stack, tenant, "u", "What is my cat called?", first.started.started.user_message_id
    )
    # Another conversation recalls the first one as a passage, fenced in the system prompt.
    await client.chat("What is my cat called?")
    body = (await rig.requests())[-1]["body"]
    context = body["system"][-1]["text"]
    assert context.startswith("<context ") and "Bartholomew" in context
    assert "cache_control" in body["system"][-1]
    assert [m["role"] for m in body["messages"]] == ["user"]
    # The same conversation sends its recent turns as alternating messages.
    await client.chat("And my dog?", conversation_id=conversation)
    body = (await rig.requests())[-1]["body"]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][0]["content"] == "My cat is called Bartholomew"


async def test_rate_limit_is_retried_after_the_retry_after_delay(rig: Rig) -> None:
    await rig.emulator.set_rules(
        [{"model": PRIMARY, "times": 1, "behaviour": {"fault": "rate_limit", "retry_after": 0.5}}]
    )
    seen = len(await rig.requests())
    turn = await (await rig.client()).chat("hello")
    assert turn.done is not None and turn.done.done.model == PRIMARY
    limited, retried = await rig.requests(seen)
    assert (limited["status"], retried["status"]) == (429, 200)
    assert retried["received_at"] - limited["received_at"] >= 0.5
    assert retried["retry_count"] == "1"


async def test_an_overloaded_model_falls_back_and_says_which_model_answered(rig: Rig) -> None:
    await rig.emulator.set_rules(
        [{"model": PRIMARY, "behaviour": {"fault": "overloaded", "retry_after": 0.05}}]
    )
    seen = len(await rig.requests())
    turn = await (await rig.client()).chat("hello")
    assert turn.started is not None and turn.done is not None and turn.usage is not None
    assert turn.started.started.model == FALLBACK == turn.done.done.model
    assert turn.usage.usage.output_tokens == TOKENS
    attempts = await rig.requests(seen)
    # The primary with one SDK retry, then the fallback: three upstream attempts.
    assert [(r["model"], r["status"]) for r in attempts] == [
        (PRIMARY, 529),
        (PRIMARY, 529),
        (FALLBACK, 200),
    ]


async def test_all_models_down_is_unavailable_within_three_attempts(rig: Rig) -> None:
    await rig.emulator.set_rules([{"behaviour": {"fault": "server_error", "retry_after": 0.05}}])
    seen = len(await rig.requests())
    turn, error = await chat_until_error(await rig.client(), "hello")
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert turn.deltas == []
    assert len(await rig.requests(seen)) == 3


async def test_rate_limited_everywhere_is_resource_exhausted(rig: Rig) -> None:
    await rig.emulator.set_rules([{"behaviour": {"fault": "rate_limit", "retry_after": 0.05}}])
    _, error = await chat_until_error(await rig.client(), "hello")
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    # The provider's retry-after reaches the client.
    infos = [d for d in status_details(error) if isinstance(d, error_details_pb2.RetryInfo)]
    assert [i.retry_delay.ToMilliseconds() for i in infos] == [50]


@pytest.mark.parametrize("fault", ["error_event", "drop"])
async def test_a_failure_after_the_first_token_ends_the_stream_and_keeps_the_partial_answer(
    rig: Rig, fault: str
) -> None:
    await rig.emulator.set_rules(
        [{"model": PRIMARY, "behaviour": {"fault": fault, "after_tokens": 3}}]
    )
    seen = len(await rig.requests())
    client = await rig.client()
    turn, error = await chat_until_error(client, "tell me something")
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    # Tokens that reach the Agent together may share a delta (docs/chain-latency.md): count words.
    assert len(turn.text.split()) == 3 and turn.done is None
    # No retry and no fallback once the answer has started.
    assert [r["model"] for r in await rig.requests(seen)] == [PRIMARY]
    assert turn.started is not None
    conversation = turn.started.started.conversation_id
    stored = await stored_answer(client, conversation)
    assert stored.status == resources_pb2.MESSAGE_STATUS_INTERRUPTED
    assert stored.finish_reason == resources_pb2.FINISH_REASON_ERROR
    assert stored.text == turn.text and stored.model == PRIMARY
    await asyncio.sleep(0.3)  # a (wrong) second record would show up by now
    assert len(await history(client, conversation)) == 2


async def test_a_stalled_stream_is_cut_with_deadline_exceeded(rig: Rig) -> None:
    await rig.emulator.set_rules(
        [{"model": PRIMARY, "behaviour": {"fault": "stall", "after_tokens": 2}}]
    )
    seen = len(await rig.requests())
    client = await rig.client()
    began = time.monotonic()
    turn, error = await chat_until_error(client, "tell me something")
    assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(turn.text.split()) == 2
    assert time.monotonic() - began < STALL_SECONDS + 2
    stalled = (await rig.requests(seen))[0]
    assert stalled["outcome"] == "client_closed"  # the Agent hung up on the provider
    assert turn.started is not None
    stored = await stored_answer(client, turn.started.started.conversation_id)
    assert stored.text == turn.text and stored.status == resources_pb2.MESSAGE_STATUS_INTERRUPTED


@pytest.mark.parametrize("fault", ["stall", "error_event", "drop"])
async def test_a_failure_before_the_first_token_falls_back(rig: Rig, fault: str) -> None:
    # The stream opened (200, message_start) but no token came: still before the first token.
    await rig.emulator.set_rules([{"model": PRIMARY, "behaviour": {"fault": fault}}])
    turn = await (await rig.client()).chat("hello")
    assert turn.done is not None and turn.done.done.model == FALLBACK
    assert turn.started is not None and turn.started.started.model == FALLBACK


async def test_client_cancel_closes_the_provider_connection_within_a_second(rig: Rig) -> None:
    await rig.emulator.set_rules(
        [{"model": PRIMARY, "behaviour": {"tokens": 200, "tokens_per_second": 10}}]
    )
    seen = len(await rig.requests())
    call = (await rig.client()).chat_call("tell me a long story")
    deltas = 0
    async for event in call:
        deltas += event.WhichOneof("event") == "delta"
        if deltas == 2:
            break
    call.cancel()
    cancelled_at = time.time()

    async def closed() -> dict[str, Any] | None:
        request = (await rig.requests(seen))[0]
        return request if request["outcome"] == "client_closed" else None

    request = await poll(closed, timeout=5)
    assert request["ended_at"] - cancelled_at < 1.0
    assert request["tokens_sent"] < 2 + 10  # stopped within a second's worth of tokens


async def test_circuit_breaker_fails_fast_during_an_outage_then_probes_once(
    tmp_path: Path,
) -> None:
    async with running_emulator("--api-key", API_KEY) as emulator:
        env = llm_env(
            emulator,
            CHATPLANE_LLM_MAX_RETRIES="0",
            CHATPLANE_LLM_BREAKER_FAILURES="2",
            CHATPLANE_LLM_BREAKER_COOLDOWN_SECONDS="1.5",
            CHATPLANE_LLM_STALL_TIMEOUT_SECONDS="10",  # the probe below is slow on purpose
        )
        async with (
            running_stack(tmp_path, env) as stack,
            grpc.aio.insecure_channel(stack.info().address("gateway")) as channel,
        ):
            client = Client(channel, await create_key(stack, "t", "u"))
            await emulator.set_rules([{"behaviour": {"fault": "server_error"}}])
            for _ in range(2):
                _, error = await chat_until_error(client, "hello")
                assert error.code() is grpc.StatusCode.UNAVAILABLE
            assert len(await emulator.requests()) == 2
            # Open: fails fast, and the provider is not called.
            began = time.monotonic()
            _, error = await chat_until_error(client, "hello")
            assert error.code() is grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - began < 1.0
            assert len(await emulator.requests()) == 2
            opened_at = time.monotonic()

            # The provider recovers; after the cooldown exactly one call probes it (a slow
            # first token keeps the probe in flight while the others arrive).
            await emulator.set_rules([{"behaviour": {"first_token_seconds": 2.0}}])
            await asyncio.sleep(max(0.0, 1.6 - (time.monotonic() - opened_at)))
            results = await asyncio.gather(
                *(client.chat("hello") for _ in range(3)), return_exceptions=True
            )
            answered = [r for r in results if isinstance(r, Turn)]
            refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
            assert len(answered) == 1 and len(refused) == 2
            assert all(r.code() is grpc.StatusCode.UNAVAILABLE for r in refused)
            assert len(await emulator.requests()) == 3
            # Closed again: everyone is served.
            await emulator.set_rules([])
            turns = await asyncio.gather(*(client.chat("hello") for _ in range(3)))
            assert all(t.done is not None for t in turns)
