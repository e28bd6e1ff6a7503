"""The Go example client (clients/go) against the real services: it streams the answer, prints
the events as JSON lines, replays an idempotent turn like any other client, and fails with a
clear message and a documented exit code (docs/clients.md)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from google.protobuf import json_format

from chatplane.launcher import Stack
from chatplane.v1 import gateway_pb2
from tests.clients.go_client import run
from tests.integration.stack_client import (
    FAST_PACE,
    Client,
    Turn,
    create_key,
    poll,
    running_stack,
    unique,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.integration]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path_factory.mktemp("stack"), FAST_PACE) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def channel(stack: Stack) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(stack.info().address("gateway")) as chan:
        yield chan


@pytest_asyncio.fixture(loop_scope="module")
async def api_key(stack: Stack) -> str:
    return await create_key(stack, unique("tenant"), unique("user"))


def turn_of(events: list[dict[str, object]]) -> Turn:
    turn = Turn()
    for event in events:
        turn.add(json_format.ParseDict(event, gateway_pb2.ChatResponse()))
    return turn


async def test_streams_the_answer_text_to_stdout(
    stack: Stack, channel: grpc.aio.Channel, go_client: Path, api_key: str
) -> None:
    gateway = stack.info().address("gateway")
    result = await run(go_client, "-addr", gateway, "-key", api_key, "-message", "Hello from Go")
    assert result.returncode == 0, result.stderr
    assert "[offline model]" in result.stdout
    ids = re.fullmatch(r"conversation (\S+), assistant message (\S+)\n", result.stderr)
    assert ids, result.stderr
    conversation_id, assistant_id = ids.groups()

    # What stdout showed is exactly the stored answer.
    client = Client(channel, api_key)

    async def stored() -> str:
        response = await client.stub.GetConversation(
            gateway_pb2.GetConversationRequest(conversation_id=conversation_id),
            metadata=client.metadata,
            timeout=10,
        )
        return next((m.text for m in response.messages if m.message_id == assistant_id), "")

    assert result.stdout == await poll(stored) + "\n"


async def test_json_events_continue_a_conversation_and_replay_like_python(
    stack: Stack, channel: grpc.aio.Channel, go_client: Path, api_key: str
) -> None:
    gateway = stack.info().address("gateway")
    client = Client(channel, api_key)
    first = await client.chat("The lighthouse keeper is called Ingrid.")
    assert first.started is not None
    conversation_id = first.started.started.conversation_id
    key = unique("idem")
    args = ("-addr", gateway, "-key", api_key, "-conversation", conversation_id)
    args += ("-idempotency-key", key, "-message", "Who keeps the lighthouse?", "-json")

    live = await run(go_client, *args)
    assert live.returncode == 0, live.stderr
    turn = turn_of(live.events())
    assert turn.kinds[0] == "started" and turn.kinds[-2:] == ["usage", "done"]
    assert turn.started is not None and turn.done is not None
    assert turn.started.started.conversation_id == conversation_id
    assert not turn.started.started.replayed
    assert [d.delta.sequence for d in turn.deltas] == list(range(1, len(turn.deltas) + 1))
    assert turn.done.done.delta_count == len(turn.deltas) > 1

    # The same key from Python, then from Go again: one stored turn, replayed identically.
    from_python = Turn()
    async for event in client.chat_call("Who keeps the lighthouse?", conversation_id, key):
        from_python.add(event)
    replay = await run(go_client, *args)
    assert replay.returncode == 0, replay.stderr
    from_go = [json_format.ParseDict(e, gateway_pb2.ChatResponse()) for e in replay.events()]
    python_events = [from_python.started, *from_python.deltas, from_python.usage, from_python.done]
    assert from_go == python_events
    assert from_python.kinds == ["started", "delta", "usage", "done"]
    assert from_python.started is not None and from_python.started.started.replayed
    replayed_ids = from_python.started.started
    assert replayed_ids.assistant_message_id == turn.started.started.assistant_message_id
    assert from_python.text == turn.text


async def test_bad_key_exits_3_with_unauthenticated(stack: Stack, go_client: Path) -> None:
    gateway = stack.info().address("gateway")
    result = await run(go_client, "-addr", gateway, "-key", "cp_nope_nope", "-message", "hi")
    assert result.returncode == 3
    assert result.stdout == ""
    assert result.stderr.startswith("chatplane-chat: UNAUTHENTICATED: ")
    assert "request id " in result.stderr


async def test_blank_message_exits_4_naming_the_field(
    stack: Stack, go_client: Path, api_key: str
) -> None:
    gateway = stack.info().address("gateway")
    result = await run(go_client, "-addr", gateway, "-key", api_key, "-message", "   ")
    assert result.returncode == 4
    assert result.stderr.startswith("chatplane-chat: INVALID_ARGUMENT: ")
    assert "field text: " in result.stderr


async def test_unreachable_gateway_exits_6_with_the_retry_key(go_client: Path) -> None:
    result = await run(
        go_client, "-addr", "127.0.0.1:1", "-key", "k", "-message", "hi", "-idempotency-key", "k1"
    )
    assert result.returncode == 6
    assert "UNAVAILABLE" in result.stderr
    assert "retry with -idempotency-key k1" in result.stderr


async def test_missing_message_is_a_usage_error(go_client: Path) -> None:
    result = await run(go_client, "-key", "k")
    assert result.returncode == 2
    assert "-message is required" in result.stderr


async def test_rate_limited_exits_5_with_the_retry_delay(
    stack: Stack, channel: grpc.aio.Channel, go_client: Path, api_key: str
) -> None:
    # Spend the key's burst (20 requests by default) on cheap calls, then chat from Go at once.
    # The bucket refills at 1 request/s: on a loaded machine the Go call may find a new token,
    # so this is tried a few times.
    client = Client(channel, api_key)
    request = gateway_pb2.ListConversationsRequest()
    gateway = stack.info().address("gateway")
    for _ in range(5):
        with pytest.raises(grpc.aio.AioRpcError) as limited:
            for _ in range(100):
                await client.stub.ListConversations(request, metadata=client.metadata, timeout=10)
        assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        result = await run(go_client, "-addr", gateway, "-key", api_key, "-message", "hi")
        if result.returncode != 0:
            break
    assert result.returncode == 5, result.stderr
    assert result.stderr.startswith("chatplane-chat: RESOURCE_EXHAUSTED: ")
    assert re.search(r"\n  retry in \d+(\.\d+)?(ms|s)\n", result.stderr), result.stderr
