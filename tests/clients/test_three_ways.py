"""Acceptance of the polyglot clients: the same conversation is reachable three ways (native
gRPC from Python and from Go, directly and through Envoy; REST/JSON with Server-Sent Events
read by `curl -N` through Envoy; gRPC-Web through Envoy, framed by hand in Python and from the
generated TypeScript with @connectrpc/connect-web in Node.js) with identical event sequences:

- a first message in a fresh conversation streams the same events every way (ids and emit
  times aside: the offline responder is deterministic when memory has nothing to recall);
- a replay of an idempotent turn is the same events every way, ids included;
- one conversation continued by each way in turn holds every turn, each stored answer equal to
  what that way streamed.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import httpx
import pytest
import pytest_asyncio
from google.protobuf import json_format

from chatplane.v1 import gateway_pb2, gateway_pb2_grpc
from tests.clients.go_client import run
from tests.clients.ts_client import run as run_ts
from tests.edge.edge_client import (
    EdgeStack,
    curl_sse,
    grpc_web_frame,
    parse_grpc_web,
    running_edge_stack,
)
from tests.integration.stack_client import poll, unique

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.integration]

Events = list[gateway_pb2.ChatResponse]
# One way of calling Chat: (api key, text, conversation id, idempotency key) -> the events.
Way = Callable[[str, str, str, str], Awaitable[Events]]
CHAT_PATH = "/chatplane.v1.GatewayService/Chat"
LIVE_SHAPE = re.compile(r"started (citation )*(delta )+usage done")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def edge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EdgeStack]:
    async with running_edge_stack(tmp_path_factory.mktemp("three-ways")) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def ways(edge: EdgeStack, go_client: Path, ts_client: Path) -> AsyncIterator[dict[str, Way]]:
    """Every way of calling Chat, by name."""
    assert edge.edge_address != edge.gateway_address  # "through Envoy" really is
    direct = grpc.aio.insecure_channel(edge.gateway_address)
    through_envoy = grpc.aio.insecure_channel(edge.edge_address)
    http = httpx.AsyncClient(base_url=edge.url, timeout=60)

    def python_grpc(channel: grpc.aio.Channel) -> Way:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)

        async def chat(key: str, text: str, conversation_id: str, idem: str) -> Events:
            request = gateway_pb2.ChatRequest(
                conversation_id=conversation_id, text=text, client_message_id=idem
            )
            metadata = (("authorization", f"Bearer {key}"),)
            return [e async for e in stub.Chat(request, metadata=metadata, timeout=60)]

        return chat

    def go(address: str) -> Way:
        async def chat(key: str, text: str, conversation_id: str, idem: str) -> Events:
            result = await run(
                go_client,
                *("-addr", address, "-key", key, "-message", text, "-json"),
                *("-conversation", conversation_id, "-idempotency-key", idem),
            )
            assert result.returncode == 0, result.stderr
            return [json_format.ParseDict(e, gateway_pb2.ChatResponse()) for e in result.events()]

        return chat

    async def sse(key: str, text: str, conversation_id: str, idem: str) -> Events:
        body = {"conversationId": conversation_id, "text": text, "clientMessageId": idem}
        stream = await curl_sse(f"{edge.url}/v1/chat", body, {"authorization": f"Bearer {key}"})
        assert stream.status == 200, stream.other_lines
        assert stream.other_lines == []
        return [json_format.ParseDict(e, gateway_pb2.ChatResponse()) for e in stream.events]

    async def grpc_web(key: str, text: str, conversation_id: str, idem: str) -> Events:
        request = gateway_pb2.ChatRequest(
            conversation_id=conversation_id, text=text, client_message_id=idem
        )
        response = await http.post(
            CHAT_PATH,
            content=grpc_web_frame(request.SerializeToString()),
            headers={
                "content-type": "application/grpc-web+proto",
                "x-grpc-web": "1",
                "authorization": f"Bearer {key}",
            },
        )
        assert response.status_code == 200, response.text
        body = parse_grpc_web(response.content)
        assert body.trailers.get("grpc-status") == "0", body.trailers
        return [gateway_pb2.ChatResponse.FromString(m) for m in body.messages]

    async def ts_grpc_web(key: str, text: str, conversation_id: str, idem: str) -> Events:
        result = await run_ts(
            ts_client,
            *("-url", edge.url, "-key", key, "-message", text, "-json"),
            *("-conversation", conversation_id, "-idempotency-key", idem),
        )
        assert result.returncode == 0, result.stderr
        return [json_format.ParseDict(e, gateway_pb2.ChatResponse()) for e in result.events()]

    yield {
        "python-grpc": python_grpc(direct),
        "python-grpc-envoy": python_grpc(through_envoy),
        "go-grpc": go(edge.gateway_address),
        "go-grpc-envoy": go(edge.edge_address),
        "sse-curl-envoy": sse,
        "grpc-web-envoy": grpc_web,
        "ts-connect-web-envoy": ts_grpc_web,
    }
    await http.aclose()
    await through_envoy.close()
    await direct.close()


def kinds(events: Events) -> str:
    return " ".join(str(e.WhichOneof("event")) for e in events)


def text(events: Events) -> str:
    return "".join(e.delta.text for e in events if e.HasField("delta"))


def without_ids(events: Events) -> Events:
    """The events less what differs between two turns by design: ids and emit times."""
    copies = []
    for event in events:
        copy = gateway_pb2.ChatResponse()
        copy.CopyFrom(event)
        if copy.HasField("started"):
            for name in ("conversation_id", "user_message_id", "assistant_message_id"):
                assert getattr(copy.started, name), f"started.{name} is empty"
                copy.started.ClearField(name)  # type: ignore[arg-type]
        if copy.HasField("delta"):
            assert copy.delta.emit_time_unix_nanos > 0
            copy.delta.emit_time_unix_nanos = 0
        copies.append(copy)
    return copies


async def test_a_fresh_conversation_streams_the_same_events_every_way(
    edge: EdgeStack, ways: dict[str, Way]
) -> None:
    streams: dict[str, Events] = {}
    for name, chat in ways.items():
        # A principal of its own: memory has nothing to recall, so the answer is deterministic.
        key = await edge.new_key(unique("tenant"), unique("user"))
        streams[name] = await chat(key, "Hello! Which ways can I reach you?", "", unique("idem"))
    reference = streams["python-grpc"]
    assert LIVE_SHAPE.fullmatch(kinds(reference)), kinds(reference)
    assert not reference[0].started.replayed
    assert "[offline model]" in text(reference)
    assert len([e for e in reference if e.HasField("delta")]) > 5
    for name, events in streams.items():
        assert without_ids(events) == without_ids(reference), name


async def test_a_replayed_turn_is_identical_every_way(
    edge: EdgeStack, ways: dict[str, Way], go_client: Path, ts_client: Path
) -> None:
    key = await edge.new_key(unique("tenant"), unique("user"))
    idem = unique("idem")
    live = await ways["python-grpc"](key, "Remember: the blue door is locked.", "", idem)
    started, done = live[0].started, live[-1].done
    replays = {
        name: await chat(key, "Remember: the blue door is locked.", "", idem)
        for name, chat in ways.items()
    }
    reference = replays["python-grpc"]
    assert kinds(reference) == "started delta usage done"
    assert reference[0].started.replayed
    for field in ("conversation_id", "user_message_id", "assistant_message_id", "model"):
        assert getattr(reference[0].started, field) == getattr(started, field), field
    assert text(reference) == text(live)
    assert reference[2] == live[-2]  # usage
    assert reference[3].done.finish_reason == done.finish_reason
    for name, events in replays.items():
        assert events == reference, name

    # The -json lines of the Go and Node.js clients are the SSE data lines, field for field.
    go_json = await run(
        go_client,
        *("-addr", edge.edge_address, "-key", key, "-json"),
        *("-message", "Remember: the blue door is locked.", "-idempotency-key", idem),
    )
    sse = await curl_sse(
        f"{edge.url}/v1/chat",
        {"text": "Remember: the blue door is locked.", "clientMessageId": idem},
        {"authorization": f"Bearer {key}"},
    )
    ts_json = await run_ts(
        ts_client,
        *("-url", edge.url, "-key", key, "-json"),
        *("-message", "Remember: the blue door is locked.", "-idempotency-key", idem),
    )
    assert go_json.events() == sse.events == ts_json.events()


async def test_one_conversation_continued_every_way_keeps_every_turn(
    edge: EdgeStack, ways: dict[str, Way]
) -> None:
    key = await edge.new_key(unique("tenant"), unique("user"))
    conversation_id = ""
    streamed: list[tuple[str, str]] = []
    for name, chat in ways.items():
        message = f"This turn comes from {name}."
        events = await chat(key, message, conversation_id, unique("idem"))
        assert LIVE_SHAPE.fullmatch(kinds(events)), (name, kinds(events))
        started = events[0].started
        assert not started.replayed
        conversation_id = conversation_id or started.conversation_id
        assert started.conversation_id == conversation_id, name
        deltas = [e.delta.sequence for e in events if e.HasField("delta")]
        assert deltas == list(range(1, len(deltas) + 1)), name
        assert events[-1].done.delta_count == len(deltas), name
        streamed += [(message, ""), (text(events), started.assistant_message_id)]

    # Each answer is in the history at most ~50 ms after its `done` (Persistence's batch).
    async with grpc.aio.insecure_channel(edge.gateway_address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)

        async def complete_history() -> gateway_pb2.GetConversationResponse | None:
            history = await stub.GetConversation(
                gateway_pb2.GetConversationRequest(conversation_id=conversation_id),
                metadata=(("authorization", f"Bearer {key}"),),
                timeout=10,
            )
            return history if len(history.messages) == len(streamed) else None

        history = await poll(complete_history)
    assert [m.text for m in history.messages] == [t for t, _ in streamed]
    assistant_ids = [m.message_id for m in history.messages[1::2]]
    assert assistant_ids == [i for _, i in streamed[1::2]]


async def test_node_client_bad_key_through_envoy_exits_3(edge: EdgeStack, ts_client: Path) -> None:
    result = await run_ts(ts_client, "-url", edge.url, "-key", "cp_nope_nope", "-message", "hi")
    assert result.returncode == 3, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("chatplane-chat: UNAUTHENTICATED: ")


async def test_node_client_streams_the_text_through_envoy(edge: EdgeStack, ts_client: Path) -> None:
    key = await edge.new_key(unique("tenant"), unique("user"))
    result = await run_ts(ts_client, "-url", edge.url, "-key", key, "-message", "Hello, Node")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("[offline model]") and result.stdout.endswith("\n")
    assert re.fullmatch(r"conversation \S+, assistant message \S+\n", result.stderr)
