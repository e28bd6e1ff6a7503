"""Hostile input against a real stack: property-based requests (hypothesis) for every RPC of
every service, undecodable and deeply nested bytes, and 10,000 concurrent streams from one
key. Every call must end with its documented status (docs/api.md): never UNKNOWN or INTERNAL,
never a hang; afterwards every service is still SERVING and its memory settles back near
its baseline."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import psutil
import pytest
import pytest_asyncio
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message as pb_message
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatplane.internal.v1 import (
    agent_pb2,
    analytics_pb2,
    audit_pb2,
    conversation_pb2,
    data_key_pb2,
    handoff_pb2,
    identity_pb2,
    memory_pb2,
    privacy_pb2,
    quota_pb2,
    turn_pb2,
    variant_registry_pb2,
)
from chatplane.launcher import Stack
from chatplane.v1 import admin_pb2, gateway_pb2, gateway_pb2_grpc, operator_pb2, registry_pb2
from tests.integration.stack_client import FAST_PACE, create_key, running_stack, unique

pytestmark = [pytest.mark.integration]

SERVICES = ("gateway", "agent", "memory", "persistence")
# A status that means a bug (INTERNAL, UNKNOWN) or a hang (DEADLINE_EXCEEDED on a call whose
# deadline is far beyond what any of these requests needs).
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED}
CALL_TIMEOUT = 30.0
MAX_MESSAGE_BYTES = 32 * 1024
# Per key: the flood is mostly refused (what it tests); every other test uses its own key.
RATE_LIMIT_PER_MINUTE = 1200
RATE_LIMIT_BURST = 100
FLOOD_STREAMS = 10_000

# Deterministic examples (the same in CI every run), no example database in the repo.
CAMPAIGN = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    env = {
        **FAST_PACE,
        "CHATPLANE_RATE_LIMIT_PER_MINUTE": str(RATE_LIMIT_PER_MINUTE),
        "CHATPLANE_RATE_LIMIT_BURST": str(RATE_LIMIT_BURST),
    }
    async with running_stack(tmp_path_factory.mktemp("hostile"), env) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def api_key(stack: Stack) -> str:
    return await create_key(stack, unique("hostile"), "mallory")


# --- strategies -----------------------------------------------------------------------------

HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.just(""),
    st.just(" \t\n"),
    st.just("a\x00b"),
    st.just(str(uuid.uuid4())),
    st.just("../../etc/passwd"),
    st.just("' OR 1=1 --"),
    st.just("\u202e\ufeff\U0001f600" * 50),
    st.just("x" * (MAX_MESSAGE_BYTES + 1)),
    st.just("é" * (MAX_MESSAGE_BYTES // 2 + 1)),  # within the limit in characters, not bytes
    st.just("y" * 300_000),
)
INT32 = st.one_of(
    st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, -1, 1, 100, 101, 500, 501, 2**31 - 1])
)
INT64 = st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([0, -1, 2**63 - 1]))


def _scalar(field: pb_descriptor.FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    types = pb_descriptor.FieldDescriptor
    if kind == types.TYPE_STRING:
        return HOSTILE_TEXT
    if kind == types.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == types.TYPE_BOOL:
        return st.booleans()
    if kind == types.TYPE_ENUM:
        return st.integers(-3, 40)  # mostly values the enum does not define
    if kind in (types.TYPE_DOUBLE, types.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    if kind in (types.TYPE_INT32, types.TYPE_SINT32, types.TYPE_SFIXED32):
        return INT32
    if kind in (types.TYPE_UINT32, types.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if kind in (types.TYPE_UINT64, types.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    return INT64


def message_strategy(
    descriptor: pb_descriptor.Descriptor, depth: int = 0
) -> st.SearchStrategy[pb_message.Message]:
    """Any message of this type: each field present or not, with hostile values, nested
    messages to three levels (a Timestamp with seconds out of range included)."""
    cls = message_factory.GetMessageClass(descriptor)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry or depth >= 3:
                continue
            value: st.SearchStrategy[Any] = message_strategy(field.message_type, depth + 1)
        else:
            value = _scalar(field)
        if field.is_repeated:
            value = st.lists(value, max_size=3)
        fields[field.name] = value

    def build(values: dict[str, Any]) -> pb_message.Message:
        message = cls()
        for name, value in values.items():
            field = descriptor.fields_by_name[name]
            target = getattr(message, name) if field.is_repeated else None
            if target is not None:
                for item in value:
                    if field.message_type is not None:
                        target.add().CopyFrom(item)
                    else:
                        target.append(item)
            elif field.message_type is not None:
                getattr(message, name).CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    return st.fixed_dictionaries({}, optional=fields).map(build)


# --- every RPC of every service --------------------------------------------------------------

# Each module's services, and the process serving them.
_MODULES = (
    ("gateway", gateway_pb2),
    ("gateway", operator_pb2),
    ("gateway", admin_pb2),
    ("gateway", registry_pb2),
    ("agent", agent_pb2),
    ("memory", memory_pb2),
    ("persistence", turn_pb2),
    ("persistence", conversation_pb2),
    ("persistence", identity_pb2),
    ("persistence", audit_pb2),
    ("persistence", quota_pb2),
    ("persistence", handoff_pb2),
    ("persistence", analytics_pb2),
    ("persistence", privacy_pb2),
    ("persistence", variant_registry_pb2),
    ("persistence", data_key_pb2),
)


def _methods() -> Iterator[tuple[str, pb_descriptor.MethodDescriptor]]:
    for service_name, module in _MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                yield service_name, method


METHODS = list(_methods())


def _call(
    channel: grpc.Channel,
    method: pb_descriptor.MethodDescriptor,
    payloads: list[bytes],
    metadata: tuple[tuple[str, str], ...],
) -> grpc.StatusCode:
    """Sends raw request bytes to a method of any shape; the status it ends with."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    identity: Callable[[bytes], bytes] = lambda data: data  # noqa: E731
    try:
        if method.client_streaming:
            if method.server_streaming:
                stream = channel.stream_stream(path, identity, identity)
                for _ in stream(iter(payloads), timeout=CALL_TIMEOUT, metadata=metadata):
                    pass
            else:
                channel.stream_unary(path, identity, identity)(
                    iter(payloads), timeout=CALL_TIMEOUT, metadata=metadata
                )
        elif method.server_streaming:
            for _ in channel.unary_stream(path, identity, identity)(
                payloads[0], timeout=CALL_TIMEOUT, metadata=metadata
            ):
                pass
        else:
            channel.unary_unary(path, identity, identity)(
                payloads[0], timeout=CALL_TIMEOUT, metadata=metadata
            )
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return, attr-defined]
    return grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("service", "method"),
    [pytest.param(s, m, id=f"{m.containing_service.name}.{m.name}") for s, m in METHODS],
)
def test_random_requests_never_break_an_rpc(
    stack: Stack, api_key: str, service: str, method: pb_descriptor.MethodDescriptor
) -> None:
    seen: Counter[str] = Counter()
    with grpc.insecure_channel(stack.info().address(service)) as channel:

        @CAMPAIGN
        @given(
            requests=st.lists(message_strategy(method.input_type), min_size=1, max_size=3),
            credentials=st.sampled_from(["valid", "none", "garbage"]),
        )
        def campaign(requests: list[pb_message.Message], credentials: str) -> None:
            metadata = {
                "valid": (("authorization", f"Bearer {api_key}"),),
                "none": (),
                "garbage": (("authorization", "Bearer cp_%%%_" + "z" * 300),),
            }[credentials]
            code = _call(channel, method, [r.SerializeToString() for r in requests], metadata)
            seen[code.name] += 1
            assert code not in FORBIDDEN, (code, requests[0])

        campaign()
    assert sum(seen.values()) >= 1, seen  # (a message without fields has few examples)


def _nested_length_delimited(depth: int) -> bytes:
    """Field 1 holding field 1 holding ... `depth` times: what a decoder recurses into when
    field 1 is a message."""
    payload = b""
    for _ in range(depth):
        length = len(payload)
        prefix = bytearray()
        while True:
            byte = length & 0x7F
            length >>= 7
            prefix.append(byte | (0x80 if length else 0))
            if not length:
                break
        payload = b"\x0a" + bytes(prefix) + payload
    return payload


# Bytes a request type may not decode: a truncated varint, a field with wire type 7, a length
# prefix past the end, groups and messages nested past protobuf's recursion limit, and a
# string field that is not UTF-8.
UNDECODABLE = {
    "truncated varint": b"\x08\xff\xff\xff",
    "invalid wire type": b"\x0f\x01",
    "length past the end": b"\x12\xff\x01abc",
    "deeply nested groups": b"\x0b" * 20_000 + b"\x0c" * 20_000,
    "deeply nested messages": _nested_length_delimited(5_000),
    "invalid UTF-8 in a string field": b"\x12\x04h\xff\xfei",
}


@pytest.mark.parametrize("case", list(UNDECODABLE))
@pytest.mark.parametrize(
    ("service", "method"),
    [pytest.param(s, m, id=f"{m.containing_service.name}.{m.name}") for s, m in METHODS],
)
def test_undecodable_bytes_are_refused_cleanly(
    stack: Stack, api_key: str, service: str, method: pb_descriptor.MethodDescriptor, case: str
) -> None:
    with grpc.insecure_channel(stack.info().address(service)) as channel:
        code = _call(
            channel, method, [UNDECODABLE[case]], (("authorization", f"Bearer {api_key}"),)
        )
    assert code not in FORBIDDEN, code


# --- the Gateway's documented answers ---------------------------------------------------------


def _chat_expected(request: gateway_pb2.ChatRequest) -> set[grpc.StatusCode]:
    """docs/api.md's answer to a ChatRequest from a user who has no conversation yet (so any
    conversation or message id names nothing of theirs); with several faults, any of their
    codes."""
    expected = set()
    branch = request.WhichOneof("branch")
    if branch == "regenerate_message_id":
        text_invalid = bool(request.text)  # a regenerate re-answers the stored question
    else:
        text_invalid = (
            not request.text.strip()
            or len(request.text.encode()) > MAX_MESSAGE_BYTES
            or "\x00" in request.text
        )
    if text_invalid or len(request.client_message_id) > 128:
        expected.add(grpc.StatusCode.INVALID_ARGUMENT)
    if branch is not None:
        target = getattr(request, branch)
        expected.add(grpc.StatusCode.NOT_FOUND if target else grpc.StatusCode.INVALID_ARGUMENT)
    if request.conversation_id:
        expected.add(grpc.StatusCode.NOT_FOUND)  # nobody's conversation, or not an id at all
    if request.variant:
        expected.add(grpc.StatusCode.PERMISSION_DENIED)  # pinning a variant is for admins
    if not expected:
        expected.add(grpc.StatusCode.OK)
    if len(request.SerializeToString()) > 4 * 1024 * 1024:
        expected = {grpc.StatusCode.RESOURCE_EXHAUSTED}  # over the gRPC message size limit
    return expected


@CAMPAIGN
@given(request=message_strategy(gateway_pb2.ChatRequest.DESCRIPTOR))
def test_chat_answers_each_request_with_its_documented_status(
    stack: Stack, api_key: str, request: gateway_pb2.ChatRequest
) -> None:
    with grpc.insecure_channel(stack.info().address("gateway")) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        kinds: list[str] = []
        try:
            for event in stub.Chat(
                request,
                timeout=CALL_TIMEOUT,
                metadata=(("authorization", f"Bearer {api_key}"),),
            ):
                kinds.append(event.WhichOneof("event") or "")
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()  # type: ignore[attr-defined]
    assert code in _chat_expected(request), (code, request.conversation_id, len(request.text))
    if code is grpc.StatusCode.OK:
        assert kinds[0] == "started" and kinds[-1] == "done", kinds


def _page_expected(page_size: int, page_token: str, maximum: int) -> bool:
    """True when docs/api.md calls this page request valid."""
    return 0 <= page_size <= maximum and not page_token


@CAMPAIGN
@given(request=message_strategy(gateway_pb2.ListConversationsRequest.DESCRIPTOR))
def test_list_conversations_answers_bad_pages_with_invalid_argument(
    stack: Stack, api_key: str, request: gateway_pb2.ListConversationsRequest
) -> None:
    with grpc.insecure_channel(stack.info().address("gateway")) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        try:
            stub.ListConversations(
                request, timeout=CALL_TIMEOUT, metadata=(("authorization", f"Bearer {api_key}"),)
            )
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()  # type: ignore[attr-defined]
    valid = _page_expected(request.page_size, request.page_token, 100)
    assert code is (grpc.StatusCode.OK if valid else grpc.StatusCode.INVALID_ARGUMENT), request


@CAMPAIGN
@given(request=message_strategy(gateway_pb2.GetConversationRequest.DESCRIPTOR))
def test_get_conversation_of_nobody_is_not_found_or_invalid(
    stack: Stack, api_key: str, request: gateway_pb2.GetConversationRequest
) -> None:
    with grpc.insecure_channel(stack.info().address("gateway")) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.GetConversation(
                request, timeout=CALL_TIMEOUT, metadata=(("authorization", f"Bearer {api_key}"),)
            )
    code = raised.value.code()  # type: ignore[attr-defined]
    known_view = request.view in gateway_pb2.ConversationView.values()
    if _page_expected(request.page_size, request.page_token, 500) and known_view:
        assert code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), request
        if request.conversation_id:
            assert code is grpc.StatusCode.NOT_FOUND, request
    else:
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), request


@CAMPAIGN
@given(request=message_strategy(gateway_pb2.SubmitFeedbackRequest.DESCRIPTOR))
def test_feedback_answers_each_request_with_its_documented_status(
    stack: Stack, api_key: str, request: gateway_pb2.SubmitFeedbackRequest
) -> None:
    with grpc.insecure_channel(stack.info().address("gateway")) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.SubmitFeedback(
                request, timeout=CALL_TIMEOUT, metadata=(("authorization", f"Bearer {api_key}"),)
            )
    code = raised.value.code()  # type: ignore[attr-defined]
    invalid = (
        not request.message_id
        or request.rating not in (gateway_pb2.RATING_THUMBS_UP, gateway_pb2.RATING_THUMBS_DOWN)
        or len(request.comment.encode()) > 4096
        or "\x00" in request.comment
        or (request.HasField("score") and not 1 <= request.score <= 5)
    )
    expected = grpc.StatusCode.INVALID_ARGUMENT if invalid else grpc.StatusCode.NOT_FOUND
    assert code is expected, request


# --- a flood from one key ------------------------------------------------------------------


def _rss(stack: Stack) -> dict[str, int]:
    pids = stack.info().pids
    return {name: psutil.Process(pids[name]).memory_info().rss for name in SERVICES}


async def _flood(stack: Stack, api_key: str, streams: int) -> Counter[str]:
    """`streams` Chat calls at once from one key over 10 connections; how each ended."""
    address = stack.info().address("gateway")
    channels = [grpc.aio.insecure_channel(address) for _ in range(10)]
    metadata = (("authorization", f"Bearer {api_key}"),)

    async def one(index: int) -> str:
        stub = gateway_pb2_grpc.GatewayServiceStub(channels[index % len(channels)])
        call = stub.Chat(
            gateway_pb2.ChatRequest(text=f"flood {index}"), metadata=metadata, timeout=120
        )
        kinds = []
        try:
            async for event in call:
                kinds.append(event.WhichOneof("event"))
        except grpc.aio.AioRpcError as error:
            return error.code().name
        return "OK" if kinds and kinds[-1] == "done" else f"OK without done: {kinds}"

    try:
        return Counter(await asyncio.gather(*(one(i) for i in range(streams))))
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))


async def _serving(stack: Stack) -> dict[str, str]:
    states = {}
    for name in SERVICES:
        async with grpc.aio.insecure_channel(stack.info().address(name)) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        states[name] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return states


@pytest.mark.timeout(600)
@pytest.mark.asyncio(loop_scope="module")
async def test_ten_thousand_concurrent_streams_from_one_key(stack: Stack) -> None:
    """Each of 10,000 concurrent streams ends with an answer or RESOURCE_EXHAUSTED (the key's
    rate limit); afterwards every service is SERVING and its memory settles within 10% of
    the baseline taken after a smaller warm-up flood (which pays for one-time growth:
    channel buffers, interned strings, allocator arenas)."""
    key = await create_key(stack, unique("flood"), "one-key")
    warm_up = await _flood(stack, key, 2_000)
    assert set(warm_up) <= {"OK", "RESOURCE_EXHAUSTED"}, warm_up
    baseline = _rss(stack)

    flood_key = await create_key(stack, unique("flood"), "one-key")
    started = time.monotonic()
    outcome = await _flood(stack, flood_key, FLOOD_STREAMS)
    elapsed = time.monotonic() - started
    assert sum(outcome.values()) == FLOOD_STREAMS
    assert set(outcome) <= {"OK", "RESOURCE_EXHAUSTED"}, outcome
    # The burst, plus what the limit refills while the flood lasts.
    assert 1 <= outcome["OK"] <= RATE_LIMIT_BURST + RATE_LIMIT_PER_MINUTE * elapsed / 60 + 1
    assert outcome["RESOURCE_EXHAUSTED"] >= FLOOD_STREAMS // 2, outcome
    assert await _serving(stack) == dict.fromkeys(SERVICES, "SERVING")

    deadline = time.monotonic() + 60
    while True:
        now = _rss(stack)
        over = {n: (now[n], baseline[n]) for n in SERVICES if now[n] > baseline[n] * 1.10}
        if not over or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert not over, f"RSS (now, baseline) over 110%: {over}"
