"""Bad input at the edge: every case gets a clear 4xx (or the matching gRPC status), never a 5xx
or a hang, oversized bodies never reach the Gateway, and afterwards Envoy and the Gateway are
still healthy. Also the Gateway's own errors as REST clients see them (convert_grpc_status)."""

from __future__ import annotations

import json
import socket
import struct
import uuid
from collections.abc import AsyncIterator

import grpc
import httpx
import psutil
import pytest
import pytest_asyncio

from chatplane.v1 import gateway_pb2, gateway_pb2_grpc
from tests.edge.edge_client import (
    ALLOWED_ORIGIN,
    GRPC_WEB_HEADERS,
    EdgeStack,
    access_log_entry,
    grpc_web_frame,
    native_chat,
    wait_healthy,
)
from tests.integration.stack_client import unique

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="package")]

CHAT_GRPC = "/chatplane.v1.GatewayService/Chat"
OVERSIZED_TEXT = "a" * (1024 * 1024)


@pytest_asyncio.fixture(loop_scope="package")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


def _json_headers(key: str = "") -> dict[str, str]:
    headers = {"content-type": "application/json", "x-request-id": str(uuid.uuid4())}
    if key:
        headers["authorization"] = f"Bearer {key}"
    return headers


async def test_no_key_is_401_rest_and_unauthenticated_grpc(
    edge_stack: EdgeStack, http: httpx.AsyncClient
) -> None:
    rest = await http.post(f"{edge_stack.url}/v1/chat", headers=_json_headers(), json={"text": "x"})
    assert rest.status_code == 401
    assert rest.json()["code"] == 16
    web = await http.post(
        f"{edge_stack.url}{CHAT_GRPC}",
        headers=GRPC_WEB_HEADERS,
        content=grpc_web_frame(gateway_pb2.ChatRequest(text="x").SerializeToString()),
    )
    assert web.status_code == 200 and web.headers["grpc-status"] == "16"
    with pytest.raises(grpc.aio.AioRpcError) as native:
        await native_chat(edge_stack.edge_address, gateway_pb2.ChatRequest(text="x"), "")
    assert native.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_oversized_body_is_rejected_before_the_gateway(
    edge_stack: EdgeStack, http: httpx.AsyncClient
) -> None:
    headers = _json_headers(edge_stack.api_key)
    rest = await http.post(
        f"{edge_stack.url}/v1/chat", headers=headers, json={"text": OVERSIZED_TEXT}
    )
    assert rest.status_code == 413
    assert rest.json()["code"] == 8 and "limit" in rest.json()["message"]
    entry = await access_log_entry(edge_stack, headers["x-request-id"])
    assert entry["upstream"] is None and entry["status"] == 413

    web_id = str(uuid.uuid4())
    web = await http.post(
        f"{edge_stack.url}{CHAT_GRPC}",
        headers={**GRPC_WEB_HEADERS, "x-request-id": web_id},
        content=grpc_web_frame(gateway_pb2.ChatRequest(text=OVERSIZED_TEXT).SerializeToString()),
    )
    assert web.status_code == 413 and web.headers["grpc-status"] == "8"
    assert (await access_log_entry(edge_stack, web_id))["upstream"] is None

    with pytest.raises(grpc.aio.AioRpcError) as native:
        await native_chat(
            edge_stack.edge_address,
            gateway_pb2.ChatRequest(text=OVERSIZED_TEXT),
            edge_stack.api_key,
        )
    assert native.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_little_over_the_text_limit_is_the_gateways_400_with_the_field(
    edge_stack: EdgeStack, http: httpx.AsyncClient
) -> None:
    response = await http.post(
        f"{edge_stack.url}/v1/chat",
        headers=_json_headers(edge_stack.api_key),
        json={"text": "a" * (32 * 1024 + 1)},
    )
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == 3
    violations = [d for d in body["details"] if d["@type"].endswith("BadRequest")]
    assert violations[0]["fieldViolations"][0]["field"] == "text"


async def test_header_with_underscore_is_rejected(
    edge_stack: EdgeStack, http: httpx.AsyncClient
) -> None:
    response = await http.post(
        f"{edge_stack.url}/v1/chat",
        headers={**_json_headers(edge_stack.api_key), "x_tenant_id": "someone-else"},
        json={"text": "hi"},
    )
    assert response.status_code == 400
    assert response.json()["code"] == 3
    async with grpc.aio.insecure_channel(edge_stack.edge_address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as native:
            await stub.ListConversations(
                gateway_pb2.ListConversationsRequest(),
                metadata=(
                    ("authorization", f"Bearer {edge_stack.api_key}"),
                    ("x_tenant_id", "someone-else"),
                ),
                timeout=5,
            )
    # Over HTTP/2 Envoy's codec resets the stream; gRPC clients report that as INTERNAL.
    assert native.value.code() is grpc.StatusCode.INTERNAL
    assert "RST_STREAM" in (native.value.details() or "")


async def test_cors_headers_only_for_an_allowed_origin(
    edge_stack: EdgeStack, http: httpx.AsyncClient
) -> None:
    preflight = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
    }
    allowed = await http.options(
        f"{edge_stack.url}/v1/chat", headers={"origin": ALLOWED_ORIGIN, **preflight}
    )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "authorization" in allowed.headers["access-control-allow-headers"]
    denied = await http.options(
        f"{edge_stack.url}/v1/chat", headers={"origin": "https://evil.example", **preflight}
    )
    assert "access-control-allow-origin" not in denied.headers
    for origin, expected in ((ALLOWED_ORIGIN, ALLOWED_ORIGIN), ("https://evil.example", None)):
        response = await http.get(
            f"{edge_stack.url}/v1/conversations",
            headers={**_json_headers(edge_stack.api_key), "origin": origin},
        )
        assert response.status_code == 200
        assert response.headers.get("access-control-allow-origin") == expected
    grpc_web = await http.options(
        f"{edge_stack.url}{CHAT_GRPC}",
        headers={
            "origin": ALLOWED_ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type, x-grpc-web, authorization",
        },
    )
    assert grpc_web.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "grpc-status" in grpc_web.headers["access-control-expose-headers"]


MALFORMED_GRPC_WEB = {
    "empty body": ({}, b""),
    "no complete prefix": ({}, b"\x00\x00"),
    "length beyond the body": ({}, struct.pack(">BI", 0, 100) + b"abc"),
    "two frames": ({}, grpc_web_frame(b"") + grpc_web_frame(b"")),
    "not a ChatRequest": ({}, grpc_web_frame(b"\xff\xff\xff\xff")),
    # text (field 2) of 4 bytes that are not UTF-8: proto3 strings must be.
    "invalid UTF-8 in text": ({}, grpc_web_frame(b"\x12\x04h\xff\xfei")),
    "invalid UTF-8 in conversation_id": ({}, grpc_web_frame(b"\x0a\x02\xc3\x28\x12\x02hi")),
    "compressed without grpc-encoding": ({}, grpc_web_frame(b"\x12\x02hi", flags=1)),
    "unknown frame flags": ({}, grpc_web_frame(b"\x12\x02hi", flags=0x7F)),
    "bad base64 (grpc-web-text)": (
        {"content-type": "application/grpc-web-text"},
        b"!!!not-base64!!",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED_GRPC_WEB))
async def test_malformed_grpc_web_is_a_client_error(
    edge_stack: EdgeStack, http: httpx.AsyncClient, case: str
) -> None:
    extra_headers, body = MALFORMED_GRPC_WEB[case]
    response = await http.post(
        f"{edge_stack.url}{CHAT_GRPC}",
        headers={
            **GRPC_WEB_HEADERS,
            "authorization": f"Bearer {edge_stack.api_key}",
            **extra_headers,
        },
        content=body,
    )
    # The edge's own rejections are HTTP 400; a frame the Gateway parses and rejects is the
    # gRPC-Web way of saying 400: HTTP 200 with INVALID_ARGUMENT.
    assert response.status_code in (200, 400), response.status_code
    assert response.headers["grpc-status"] == "3", response.headers
    assert response.headers["grpc-message"]
    await wait_healthy(edge_stack)


MALFORMED_JSON = {
    "truncated": b'{"text": ',
    "not json": b"hello?",
    "wrong type": b'{"text": 5}',
    "array": b'[{"text": "hi"}]',
    "invalid UTF-8 in a string": b'{"text": "h\xff\xfei"}',
    "lone surrogate escape": b'{"text": "h\\ud800i"}',
}


@pytest.mark.parametrize("case", list(MALFORMED_JSON))
async def test_malformed_json_is_400(
    edge_stack: EdgeStack, http: httpx.AsyncClient, case: str
) -> None:
    response = await http.post(
        f"{edge_stack.url}/v1/chat",
        headers=_json_headers(edge_stack.api_key),
        content=MALFORMED_JSON[case],
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == 3
    await wait_healthy(edge_stack)


async def test_after_bad_input_a_normal_chat_still_works(
    edge_stack: EdgeStack, http: httpx.AsyncClient
) -> None:
    await wait_healthy(edge_stack)
    events = await native_chat(
        edge_stack.edge_address, gateway_pb2.ChatRequest(text="still there?"), edge_stack.api_key
    )
    assert events[-1].WhichOneof("event") == "done"


async def test_unknown_paths_are_404(edge_stack: EdgeStack, http: httpx.AsyncClient) -> None:
    headers = _json_headers(edge_stack.api_key)
    unknown_rest = await http.get(f"{edge_stack.url}/v1/nothing-here", headers=headers)
    assert unknown_rest.status_code == 404 and unknown_rest.json()["code"] == 5
    unknown_query = await http.get(f"{edge_stack.url}/v1/conversations?bogus=1", headers=headers)
    assert unknown_query.status_code == 400
    # The internal services are not exposed, over any protocol.
    async with grpc.aio.insecure_channel(edge_stack.edge_address) as channel:
        call = channel.unary_unary("/chatplane.internal.v1.IdentityService/CreateApiKey")
        with pytest.raises(grpc.aio.AioRpcError) as internal:
            await call(b"", timeout=5)
    assert internal.value.code() is grpc.StatusCode.UNIMPLEMENTED
    # No web chat behind this edge: a path outside the API is unknown too, over any protocol
    # (the web cluster is there, without an endpoint).
    page = await http.get(f"{edge_stack.url}/index.html")
    assert page.status_code == 404 and page.json()["code"] == 5
    async with grpc.aio.insecure_channel(edge_stack.edge_address) as channel:
        call = channel.unary_unary("/other.v1.Service/Method")
        with pytest.raises(grpc.aio.AioRpcError) as other:
            await call(b"", timeout=5)
    assert other.value.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_the_health_check_is_answered_by_the_edge(
    edge_stack: EdgeStack, http: httpx.AsyncClient
) -> None:
    health = await http.get(f"{edge_stack.url}/healthz")
    assert health.status_code == 200
    assert "x-envoy-upstream-service-time" not in health.headers  # no upstream involved


async def test_gateway_errors_map_to_http_codes(
    edge_stack: EdgeStack, http: httpx.AsyncClient
) -> None:
    """convert_grpc_status: the Gateway's google.rpc.Status becomes the JSON body, its code the
    HTTP status (the table in docs/edge.md)."""
    key = await edge_stack.new_key(unique("tenant"), "user")
    headers = _json_headers(key)
    missing = await http.get(f"{edge_stack.url}/v1/conversations/{uuid.uuid4()}", headers=headers)
    assert missing.status_code == 404 and missing.json()["code"] == 5
    bad_rating = await http.post(
        f"{edge_stack.url}/v1/messages/{uuid.uuid4()}/feedback", headers=headers, json={}
    )
    assert bad_rating.status_code == 400 and bad_rating.json()["code"] == 3
    # The Gateway's per-user rate limit (burst 30 in this stack): 429 with RetryInfo.
    statuses = []
    limited: httpx.Response | None = None
    for _ in range(300):
        response = await http.get(f"{edge_stack.url}/v1/conversations", headers=headers)
        statuses.append(response.status_code)
        if response.status_code == 429:
            limited = response
            break
    assert limited is not None, statuses
    body = limited.json()
    assert body["code"] == 8
    retry = [d for d in body["details"] if d["@type"].endswith("google.rpc.RetryInfo")]
    assert retry and retry[0]["retryDelay"].endswith("s")


def _non_loopback_ipv4() -> str | None:
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return str(address.address)
    return None


async def test_admin_answers_on_loopback_only(edge_stack: EdgeStack) -> None:
    port = int(edge_stack.admin_address.rpartition(":")[2])
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    other = _non_loopback_ipv4()
    if other is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    with pytest.raises(OSError), socket.create_connection((other, port), timeout=2):
        pass


async def test_stub_over_envoy_sees_request_id_and_retry_after_headers(
    edge_stack: EdgeStack, http: httpx.AsyncClient
) -> None:
    """The edge returns the caller's x-request-id (or one it made) on every response."""
    headers = _json_headers(edge_stack.api_key)
    response = await http.get(f"{edge_stack.url}/v1/conversations", headers=headers)
    assert response.headers["x-request-id"] == headers["x-request-id"]
    async with grpc.aio.insecure_channel(edge_stack.edge_address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        call = stub.ListConversations(
            gateway_pb2.ListConversationsRequest(),
            metadata=(("authorization", f"Bearer {edge_stack.api_key}"),),
            timeout=5,
        )
        await call
        initial = dict(await call.initial_metadata())
    assert initial.get("x-request-id")
    assert json.dumps(initial)  # plain strings
