"""The edge Envoy configuration of istio/ in front of the real services (embedded profile, on
loopback): REST/JSON with Server-Sent Events, gRPC-Web and native gRPC reach the Gateway, errors
keep their HTTP meaning, CORS admits only the configured origin. Only the listener/admin ports
and the upstream address differ from what the cluster runs."""

from __future__ import annotations

import http.client
import json
import struct
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from chatplane.launcher import Stack
from chatplane.v1 import gateway_pb2, gateway_pb2_grpc
from tests.deploy.local_edge import local_edge_envoy
from tests.deploy.manifests import edge_config, render
from tests.integration.stack_client import FAST_PACE, create_key, running_stack, unique

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]
ORIGIN = "https://chat.example.com"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path_factory.mktemp("stack"), FAST_PACE) as running:
        yield running


@pytest.fixture(scope="module")
def edge_port(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The edge Envoy, configured as in prod, with the local Gateway as its upstream."""
    docs = render("prod")
    config = edge_config(docs)
    (cluster,) = config["static_resources"]["clusters"]
    host, port = stack.info().address("gateway").rsplit(":", 1)
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"]["socket_address"] = {"address": host, "port_value": int(port)}
    directory = tmp_path_factory.mktemp("edge")
    with local_edge_envoy(docs, config, directory, log_level="error") as admin_file:
        yield _listener_port(admin_file)


def _listener_port(admin_file: Path) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if admin_file.exists() and (admin := admin_file.read_text().strip()):
            host, port = admin.rsplit(":", 1)
            connection = http.client.HTTPConnection(host, int(port), timeout=2)
            try:
                connection.request("GET", "/listeners?format=json")
                statuses = json.loads(connection.getresponse().read())["listener_statuses"]
                if statuses and "local_address" in statuses[0]:
                    return int(statuses[0]["local_address"]["socket_address"]["port_value"])
            except (OSError, ValueError):
                pass
            finally:
                connection.close()
        time.sleep(0.05)
    raise AssertionError("the edge Envoy did not start")


def request(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


async def test_rest_chat_streams_sse_events_and_history_reads_back(
    stack: Stack, edge_port: int
) -> None:
    key = await create_key(stack, unique("tenant"), unique("user"))
    auth = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    status, _, body = request(
        edge_port, "POST", "/v1/chat", json.dumps({"text": "hello through the edge"}).encode(), auth
    )
    assert status == 200, body
    events = [
        json.loads(line.removeprefix("data: "))
        for line in body.decode().splitlines()
        if line.startswith("data: ")
    ]
    kinds = [next(iter(event)) for event in events]
    assert kinds[0] == "started" and kinds[-1] == "done" and "delta" in kinds
    conversation = events[0]["started"]["conversationId"]
    status, _, body = request(edge_port, "GET", "/v1/conversations", headers=auth)
    assert status == 200
    assert conversation in {c["conversationId"] for c in json.loads(body)["conversations"]}


async def test_rest_errors_keep_their_http_meaning(stack: Stack, edge_port: int) -> None:
    status, headers, _ = request(edge_port, "GET", "/v1/conversations")
    assert status == 401
    assert headers["grpc-status"] == str(grpc.StatusCode.UNAUTHENTICATED.value[0])
    key = await create_key(stack, unique("tenant"), unique("user"))
    status, headers, _ = request(
        edge_port,
        "POST",
        "/v1/chat",
        json.dumps({"text": "   "}).encode(),
        {"authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    assert status == 400
    assert headers["grpc-status"] == str(grpc.StatusCode.INVALID_ARGUMENT.value[0])
    assert headers["grpc-status-details-bin"]  # the field, as google.rpc.BadRequest


async def test_grpc_web_and_native_grpc_reach_the_gateway(stack: Stack, edge_port: int) -> None:
    key = await create_key(stack, unique("tenant"), unique("user"))
    message = gateway_pb2.ListConversationsRequest().SerializeToString()
    status, headers, body = request(
        edge_port,
        "POST",
        "/chatplane.v1.GatewayService/ListConversations",
        b"\x00" + struct.pack(">I", len(message)) + message,
        {
            "content-type": "application/grpc-web+proto",
            "x-grpc-web": "1",
            "authorization": f"Bearer {key}",
            "origin": ORIGIN,
        },
    )
    assert status == 200
    assert headers["access-control-allow-origin"] == ORIGIN
    trailer = body[body.rindex(b"\x80") + 5 :].decode()  # the trailer frame (flag 0x80)
    assert "grpc-status:0" in trailer.replace(" ", "")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{edge_port}") as channel:
        events = [
            event.WhichOneof("event")
            async for event in gateway_pb2_grpc.GatewayServiceStub(channel).Chat(
                gateway_pb2.ChatRequest(text="native gRPC through the edge"),
                metadata=(("authorization", f"Bearer {key}"),),
                timeout=30,
            )
        ]
    assert events[0] == "started" and events[-1] == "done"


async def test_cors_admits_only_the_configured_origin(edge_port: int) -> None:
    preflight = {"access-control-request-method": "POST"}
    _, headers, _ = request(
        edge_port, "OPTIONS", "/v1/chat", headers={**preflight, "origin": ORIGIN}
    )
    assert headers["access-control-allow-origin"] == ORIGIN
    assert "x-chatplane-user-token" in headers["access-control-allow-headers"]
    _, headers, _ = request(
        edge_port, "OPTIONS", "/v1/chat", headers={**preflight, "origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in headers
