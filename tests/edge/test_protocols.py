"""One API, three ways through Envoy: gRPC-Web (framed by hand, as a browser library would),
REST/JSON with Server-Sent Events, and native gRPC over HTTP/2, all on the edge's one port."""

from __future__ import annotations

import json

import httpx
import pytest

from chatplane.v1 import gateway_pb2, resources_pb2
from tests.edge.edge_client import EdgeStack, curl_sse, grpc_web_chat, native_chat
from tests.integration.stack_client import poll, unique

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="package")]

QUESTION = "Which plan includes single sign-on and audit logs?"


async def test_grpc_web_streams_a_chat_frame_by_frame(edge_stack: EdgeStack) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        stream = await grpc_web_chat(
            client, edge_stack.url, gateway_pb2.ChatRequest(text=QUESTION), edge_stack.api_key
        )
    assert stream.status == 200
    assert stream.headers["content-type"] == "application/grpc-web+proto"
    assert stream.grpc_status == "0"
    kinds = stream.kinds
    assert kinds[0] == "started" and kinds[-2:] == ["usage", "done"]
    sequences = [e.delta.sequence for e in stream.events if e.WhichOneof("event") == "delta"]
    assert sequences == list(range(1, len(sequences) + 1)) and len(sequences) > 5
    assert stream.events[-1].done.finish_reason == resources_pb2.FINISH_REASON_STOP
    # Streamed: the first token arrived well before the answer ended (~1 s at 100 tokens/s).
    first = kinds.index("delta")
    assert stream.receipt_ns[-1] - stream.receipt_ns[first] > 0.3e9


async def test_native_grpc_passes_through_on_the_same_port(edge_stack: EdgeStack) -> None:
    events = await native_chat(
        edge_stack.edge_address, gateway_pb2.ChatRequest(text=QUESTION), edge_stack.api_key
    )
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "started" and kinds[-1] == "done"
    assert events[-1].done.delta_count == kinds.count("delta")


async def test_three_protocols_give_identical_event_sequences(edge_stack: EdgeStack) -> None:
    """The same first question of three new users (empty memory) through each protocol."""
    keys = [await edge_stack.new_key(unique("tenant"), "user") for _ in range(3)]
    request = gateway_pb2.ChatRequest(text=QUESTION)
    sse = await curl_sse(
        f"{edge_stack.url}/v1/chat", {"text": QUESTION}, {"authorization": f"Bearer {keys[0]}"}
    )
    async with httpx.AsyncClient(timeout=30) as client:
        web = await grpc_web_chat(client, edge_stack.url, request, keys[1])
    native = await native_chat(edge_stack.edge_address, request, keys[2])
    native_kinds = [str(e.WhichOneof("event")) for e in native]
    native_text = "".join(e.delta.text for e in native if e.WhichOneof("event") == "delta")
    assert sse.kinds == web.kinds == native_kinds
    assert sse.text == web.text == native_text
    assert int(sse.events[-1]["done"]["deltaCount"]) == web.events[-1].done.delta_count


async def test_one_conversation_continued_over_all_three(edge_stack: EdgeStack) -> None:
    key = await edge_stack.new_key(unique("tenant"), "user")
    auth = {"authorization": f"Bearer {key}"}
    first = await curl_sse(f"{edge_stack.url}/v1/chat", {"text": "My cat is Bartholomew."}, auth)
    conversation_id = first.events[0]["started"]["conversationId"]
    async with httpx.AsyncClient(timeout=30) as client:
        second = await grpc_web_chat(
            client,
            edge_stack.url,
            gateway_pb2.ChatRequest(conversation_id=conversation_id, text="He loves sardines."),
            key,
        )
        third = await native_chat(
            edge_stack.edge_address,
            gateway_pb2.ChatRequest(conversation_id=conversation_id, text="What is my cat?"),
            key,
        )
        assert second.events[0].started.conversation_id == conversation_id
        assert third[0].started.conversation_id == conversation_id
        assert "Bartholomew" in "".join(e.delta.text for e in third if e.delta.text)

        async def six_messages() -> list[dict[str, object]] | None:
            response = await client.get(
                f"{edge_stack.url}/v1/conversations/{conversation_id}", headers=auth
            )
            assert response.status_code == 200, response.text
            messages = json.loads(response.text).get("messages", [])
            return messages if len(messages) == 6 else None

        messages = await poll(six_messages)
    assert [m["role"] for m in messages] == ["ROLE_USER", "ROLE_ASSISTANT"] * 3


async def test_a_history_page_larger_than_the_edge_buffers_is_transcoded(
    edge_stack: EdgeStack,
) -> None:
    """A unary JSON response is transcoded whole: 4 messages of 12 KiB (~50 KiB of JSON) pass
    the 32 KiB connection buffers."""
    key = await edge_stack.new_key(unique("tenant"), "user")
    auth = {"authorization": f"Bearer {key}"}
    conversation_id = ""
    for index in range(4):
        events = await native_chat(
            edge_stack.edge_address,
            gateway_pb2.ChatRequest(conversation_id=conversation_id, text=f"{index} " * 6000),
            key,
        )
        conversation_id = events[0].started.conversation_id
    async with httpx.AsyncClient(timeout=30) as client:

        async def eight_messages() -> httpx.Response | None:
            response = await client.get(
                f"{edge_stack.url}/v1/conversations/{conversation_id}", headers=auth
            )
            assert response.status_code == 200, response.text[:500]
            return response if len(response.json().get("messages", [])) == 8 else None

        response = await poll(eight_messages)
    assert len(response.content) > 48 * 1024
