"""The edge of istio/ in front of the real services (embedded profile, on loopback): the edge
Deployment's command with the pod's settings, so REST/JSON with Server-Sent Events, gRPC-Web and
native gRPC reach the Gateway, errors keep their HTTP meaning, CORS admits only the configured
origin, and SIGTERM drains it. Only the listener/admin ports and the upstream address differ
from what the cluster runs. And the edge `chatplane up` starts and this one run the same
envoy/envoy.yaml."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import signal
import string
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import pytest_asyncio

from chatplane.edge.envoy_values import TEMPLATE
from chatplane.launcher import Stack
from chatplane.launcher.stack import EDGE
from chatplane.v1 import gateway_pb2, gateway_pb2_grpc
from tests.deploy.local_edge import LocalEdge, edge_container, local_edge
from tests.deploy.manifests import render
from tests.integration.stack_client import FAST_PACE, create_key, running_stack, unique

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]
ORIGIN = "https://chat.example.com"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """The services with the edge `chatplane up` starts in front of them."""
    # Answers of about two seconds: a stream is still in flight when an edge is told to stop.
    pace = {**FAST_PACE, "CHATPLANE_OFFLINE_TOKENS_PER_SECOND": "50"}
    async with running_stack(tmp_path_factory.mktemp("stack"), pace, edge=True) as running:
        yield running


@pytest.fixture(scope="module")
def pod_edge(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEdge]:
    """The edge as the prod overlay runs it, with the local Gateway as its upstream."""
    directory = tmp_path_factory.mktemp("edge")
    with local_edge(
        render("prod"), directory, gateway_address=stack.info().address("gateway")
    ) as edge:
        yield edge


@pytest.fixture(scope="module")
def edge_port(pod_edge: LocalEdge) -> int:
    return pod_edge.port


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
    """The Gateway's google.rpc.Status as the JSON body, its code as the HTTP status."""
    status, _, body = request(edge_port, "GET", "/v1/conversations")
    assert status == 401
    assert json.loads(body)["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    key = await create_key(stack, unique("tenant"), unique("user"))
    status, _, body = request(
        edge_port,
        "POST",
        "/v1/chat",
        json.dumps({"text": "   "}).encode(),
        {"authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    assert status == 400
    error = json.loads(body)
    assert error["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    (bad_request,) = [d for d in error["details"] if d["@type"].endswith("google.rpc.BadRequest")]
    assert bad_request["fieldViolations"][0]["field"] == "text"


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


async def _first_failed_health_check(url: str) -> int:
    """Polls a health check until it stops answering 200; that answer (0: no connection)."""
    async with asyncio.timeout(10), httpx.AsyncClient(timeout=2) as probe:
        while True:
            try:
                status = (await probe.get(url, headers={"connection": "close"})).status_code
            except httpx.TransportError:
                return 0
            if status != 200:
                return status
            await asyncio.sleep(0.02)  # polling Envoy: it has no event to wait on


def _filled_in_pattern(template: str) -> re.Pattern[str]:
    """Matches `template` with any text in place of each placeholder, and nothing else."""
    parts = re.split(r"(?<!\$)\$\{\w+\}", template)
    literal = [string.Template(part).safe_substitute() for part in parts]  # `$$` is `$`
    return re.compile("(?s:.*?)".join(re.escape(part) for part in literal))


async def test_chatplane_up_and_the_pod_run_the_same_envoy_yaml(
    stack: Stack, pod_edge: LocalEdge
) -> None:
    """What each edge's Envoy runs is envoy/envoy.yaml with only its placeholders filled in."""
    pattern = _filled_in_pattern(TEMPLATE.read_text())
    up_config = stack.data_dir / "edge" / "envoy.yaml"
    assert stack.services[EDGE].port  # the launcher's edge is running
    for running in (up_config, pod_edge.config_path):
        assert pattern.fullmatch(running.read_text()), running
    # ... with their own values: the pod's are not a laptop's.
    assert '"0.0.0.0"' not in up_config.read_text()
    assert "gateway.chatplane.svc.cluster.local" not in up_config.read_text()


async def test_sigterm_fails_the_health_check_and_lets_a_stream_finish(
    stack: Stack, tmp_path: Path
) -> None:
    """The pod's preStop only pauses: SIGTERM makes the edge fail /healthz (readiness drops),
    drain its listener, and wait for the answer in flight, which still ends with `done`."""
    key = await create_key(stack, unique("tenant"), unique("user"))
    docs = render("prod")
    hook = edge_container(docs)["lifecycle"]["preStop"]
    assert set(hook) == {"sleep"}
    with local_edge(docs, tmp_path, gateway_address=stack.info().address("gateway")) as edge:
        health = f"http://127.0.0.1:{edge.port}/healthz"
        events: list[str] = []
        statuses: list[int] = []
        async with (
            httpx.AsyncClient(timeout=30) as client,
            client.stream(
                "POST",
                f"http://127.0.0.1:{edge.port}/v1/chat",
                headers={"authorization": f"Bearer {key}"},
                json={"text": "Tell me about the delivery address."},
            ) as response,
        ):
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(next(iter(json.loads(line[6:]))))
                if len(events) == 1:
                    statuses.append((await client.get(health)).status_code)
                    edge.process.send_signal(signal.SIGTERM)
                    statuses.append(await _first_failed_health_check(health))
        assert events[0] == "started" and events[-1] == "done"
        assert statuses == [200, 503]
        assert edge.process.wait(timeout=60) == 0
