"""The chat path end to end on the four real service processes (embedded profile): streaming,
memory recall, history, input validation, tenant isolation, idempotency, rate limiting."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from psycopg.conninfo import make_conninfo

from chatplane.common.topics import MESSAGES_TOPIC
from chatplane.internal.v1 import identity_pb2
from chatplane.launcher import Stack
from chatplane.log import PostgresMessageLog
from chatplane.persistence.client import PersistenceClient
from chatplane.persistence.service import SERVICE_NAMES as PERSISTENCE_SERVICE_NAMES
from chatplane.v1 import admin_resources_pb2, gateway_pb2, resources_pb2
from tests.engine_processes import Engines
from tests.integration.stack_client import (
    FAST_PACE,
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


@pytest.fixture(scope="module")
def log_dsn(postgres_server: Engines) -> Iterator[str]:
    """A database for the module's stack, where its message log lives; dropped at the end."""
    maintenance = postgres_server.env["CHATPLANE_POSTGRES_DSN"]
    name = f"chat_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(maintenance, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(maintenance, dbname=name)
    finally:
        with psycopg.connect(maintenance, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory, log_dsn: str) -> AsyncIterator[Stack]:
    env = {
        **FAST_PACE,
        "CHATPLANE_POSTGRES_DSN": log_dsn,
        "CHATPLANE_RATE_LIMIT_PER_MINUTE": "6000",
        "CHATPLANE_RATE_LIMIT_BURST": "200",
    }
    async with running_stack(tmp_path_factory.mktemp("stack"), env) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def channel(stack: Stack) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(stack.info().address("gateway")) as chan:
        yield chan


async def new_client(
    stack: Stack, channel: grpc.aio.Channel, tenant: str = "", user: str = ""
) -> Client:
    return Client(
        channel, await create_key(stack, tenant or unique("tenant"), user or unique("user"))
    )


async def test_streamed_chat_has_ordered_contiguous_deltas_and_done_last(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    client = await new_client(stack, channel)
    turn = await client.chat("Hello there, what can you do?")
    assert turn.kinds[0] == "started"
    assert turn.kinds[-1] == "done"
    assert turn.kinds[-2] == "usage"
    assert turn.started is not None and turn.done is not None
    assert turn.started.started.model == turn.done.done.model == "chatplane-offline-1"
    sequences = [d.delta.sequence for d in turn.deltas]
    assert len(sequences) > 5
    assert sequences == list(range(1, len(sequences) + 1))
    assert turn.done.done.delta_count == len(sequences)
    assert turn.done.done.finish_reason == resources_pb2.FINISH_REASON_STOP
    assert "[offline model]" in turn.text
    assert turn.usage is not None and turn.usage.usage.output_tokens > 0


async def test_next_turn_recalls_the_previous_one(stack: Stack, channel: grpc.aio.Channel) -> None:
    tenant, user = unique("tenant"), unique("user")
    client = await new_client(stack, channel, tenant=tenant, user=user)
    first = await client.chat("My cat is named Bartholomew and he loves sardines.")
    assert first.started is not None
    first_id = first.started.started.user_message_id
    # Recall may lag the turn (Memory indexes it from the log); the recent turns may not.
    await wait_until_indexed(stack, tenant, user, "name of my cat", first_id)
    # A brand-new conversation: only memory recall can bring the first turn back.
    second = await client.chat("What is the name of my cat?")
    assert second.started is not None
    assert second.started.started.conversation_id != first.started.started.conversation_id
    cited = {c.citation.source_id for c in second.citations}
    assert first.started.started.user_message_id in cited
    assert "Bartholomew" in second.text
    # And within the conversation, the recent turns come along.
    conversation = second.started.started.conversation_id
    third = await client.chat("Thanks!", conversation_id=conversation)
    assert third.started is not None and third.started.started.conversation_id == conversation


async def test_history_lists_conversations_and_messages(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    client = await new_client(stack, channel)
    turn = await client.chat("Plan a trip to Lisbon")
    assert turn.started is not None
    started = turn.started.started

    async def stored() -> gateway_pb2.GetConversationResponse | None:
        response = await client.stub.GetConversation(
            gateway_pb2.GetConversationRequest(conversation_id=started.conversation_id),
            metadata=client.metadata,
        )
        return response if len(response.messages) == 2 else None

    history = await poll(stored)
    user, assistant = history.messages
    assert (user.message_id, user.role, user.text) == (
        started.user_message_id,
        resources_pb2.ROLE_USER,
        "Plan a trip to Lisbon",
    )
    assert assistant.message_id == started.assistant_message_id
    assert assistant.text == turn.text
    assert assistant.status == resources_pb2.MESSAGE_STATUS_COMPLETE
    listed = await client.stub.ListConversations(
        gateway_pb2.ListConversationsRequest(), metadata=client.metadata
    )
    assert [c.conversation_id for c in listed.conversations] == [started.conversation_id]
    assert listed.conversations[0].title == "Plan a trip to Lisbon"


@pytest.mark.parametrize(
    ("text", "field"),
    [("", "text"), ("   \n\t ", "text"), ("x" * (32 * 1024 + 1), "text")],
    ids=["empty", "whitespace", "oversized"],
)
async def test_bad_text_is_invalid_argument_naming_the_field(
    stack: Stack, channel: grpc.aio.Channel, text: str, field: str
) -> None:
    client = await new_client(stack, channel)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.chat(text)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = status_details(raised.value)
    violations = [
        v.field
        for d in details
        if isinstance(d, error_details_pb2.BadRequest)
        for v in d.field_violations
    ]
    assert violations == [field]
    assert any(isinstance(d, error_details_pb2.RequestInfo) and d.request_id for d in details)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        ("list-size", "page_size"),
        ("list-token", "page_token"),
        ("get-size", "page_size"),
        ("get-token", "page_token"),
    ],
)
async def test_bad_pages_are_invalid_argument_naming_the_callers_field(
    stack: Stack, channel: grpc.aio.Channel, call: str, field: str
) -> None:
    """The page is checked by Persistence; its refusal reaches the caller as their own
    field's violation (not UNAVAILABLE, as a bad request of the Gateway's own would)."""
    client = await new_client(stack, channel)
    turn = await client.chat("hi")
    assert turn.started is not None
    conversation_id = turn.started.started.conversation_id
    requests = {
        "list-size": gateway_pb2.ListConversationsRequest(page_size=101),
        "list-token": gateway_pb2.ListConversationsRequest(page_token=" %% "),
        "get-size": gateway_pb2.GetConversationRequest(
            conversation_id=conversation_id, page_size=-1
        ),
        "get-token": gateway_pb2.GetConversationRequest(
            conversation_id=conversation_id, page_token="abc"
        ),
    }
    request = requests[call]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        if isinstance(request, gateway_pb2.ListConversationsRequest):
            await client.stub.ListConversations(request, metadata=client.metadata, timeout=10)
        else:
            await client.stub.GetConversation(request, metadata=client.metadata, timeout=10)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    violations = [
        v.field
        for d in status_details(raised.value)
        if isinstance(d, error_details_pb2.BadRequest)
        for v in d.field_violations
    ]
    assert violations == [field]


async def test_text_at_the_limit_is_accepted(stack: Stack, channel: grpc.aio.Channel) -> None:
    client = await new_client(stack, channel)
    turn = await client.chat("y" * (32 * 1024))
    assert turn.done is not None


@pytest.mark.parametrize("conversation_id", ["not-an-id", "8d3c2f6e-4d8e-4f8a-9a55-6c1f6f0b2f11"])
async def test_unknown_conversation_is_not_found(
    stack: Stack, channel: grpc.aio.Channel, conversation_id: str
) -> None:
    client = await new_client(stack, channel)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.chat("hi", conversation_id=conversation_id)
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "metadata",
    [(), (("authorization", "Bearer cp_nope_nope"),), (("authorization", "Basic abc"),)],
    ids=["missing", "unknown-key", "wrong-scheme"],
)
async def test_missing_or_bad_key_is_unauthenticated(
    stack: Stack, channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]
) -> None:
    client = await new_client(stack, channel)
    calls = [
        client.stub.Chat(gateway_pb2.ChatRequest(text="hi"), metadata=metadata).read(),
        client.stub.ListConversations(gateway_pb2.ListConversationsRequest(), metadata=metadata),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_a_key_with_a_wrong_secret_is_unauthenticated(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    key = await create_key(stack, unique("tenant"), unique("user"))
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await Client(channel, forged).chat("hi")
    assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_other_tenants_and_users_see_not_found(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    tenant = unique("tenant")
    owner = await new_client(stack, channel, tenant=tenant)
    same_tenant_other_user = await new_client(stack, channel, tenant=tenant)
    other_tenant_same_user_name = await new_client(stack, channel)
    turn = await owner.chat("A private note about my salary")
    assert turn.started is not None
    started = turn.started.started
    for intruder in (same_tenant_other_user, other_tenant_same_user_name):
        attempts = [
            intruder.stub.GetConversation(
                gateway_pb2.GetConversationRequest(conversation_id=started.conversation_id),
                metadata=intruder.metadata,
            ),
            intruder.stub.DeleteConversation(
                gateway_pb2.DeleteConversationRequest(conversation_id=started.conversation_id),
                metadata=intruder.metadata,
            ),
            intruder.stub.SubmitFeedback(
                gateway_pb2.SubmitFeedbackRequest(
                    message_id=started.assistant_message_id, rating=gateway_pb2.RATING_THUMBS_DOWN
                ),
                metadata=intruder.metadata,
            ),
            intruder.chat("and now?", conversation_id=started.conversation_id),
        ]
        for attempt in attempts:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await attempt
            assert raised.value.code() is grpc.StatusCode.NOT_FOUND
        listed = await intruder.stub.ListConversations(
            gateway_pb2.ListConversationsRequest(), metadata=intruder.metadata
        )
        assert started.conversation_id not in {c.conversation_id for c in listed.conversations}
        # Memory is scoped too: the intruder's recall never brings the owner's turn back.
        probe = await intruder.chat("A private note about my salary")
        leaked = {started.user_message_id, started.assistant_message_id}
        assert not leaked & {c.citation.source_id for c in probe.citations}
    # The owner still has everything.
    await owner.stub.GetConversation(
        gateway_pb2.GetConversationRequest(conversation_id=started.conversation_id),
        metadata=owner.metadata,
    )


async def test_feedback_and_delete(stack: Stack, channel: grpc.aio.Channel) -> None:
    tenant, user = unique("tenant"), unique("user")
    client = await new_client(stack, channel, tenant=tenant, user=user)
    turn = await client.chat("My gym locker code is 4711")
    assert turn.started is not None
    started = turn.started.started
    deleted_ids = {started.user_message_id, started.assistant_message_id}
    await wait_until_indexed(stack, tenant, user, "gym locker code", started.user_message_id)
    before = await client.chat("What is my gym locker code?")
    assert deleted_ids & {c.citation.source_id for c in before.citations}

    async def feedback_accepted() -> bool:
        try:
            await client.stub.SubmitFeedback(
                gateway_pb2.SubmitFeedbackRequest(
                    message_id=started.assistant_message_id,
                    rating=gateway_pb2.RATING_THUMBS_UP,
                    comment="great",
                ),
                metadata=client.metadata,
            )
        except grpc.aio.AioRpcError as error:
            assert error.code() is grpc.StatusCode.NOT_FOUND  # not consumed into the store yet
            return False
        return True

    await poll(feedback_accepted)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.stub.SubmitFeedback(
            gateway_pb2.SubmitFeedbackRequest(message_id=started.assistant_message_id),
            metadata=client.metadata,
        )
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    await client.stub.DeleteConversation(
        gateway_pb2.DeleteConversationRequest(conversation_id=started.conversation_id),
        metadata=client.metadata,
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.stub.GetConversation(
            gateway_pb2.GetConversationRequest(conversation_id=started.conversation_id),
            metadata=client.metadata,
        )
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND
    # Deleted means forgotten: memory no longer recalls it.
    after = await client.chat("What is my gym locker code?")
    assert not deleted_ids & {c.citation.source_id for c in after.citations}
    # And deleting again is NOT_FOUND.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.stub.DeleteConversation(
            gateway_pb2.DeleteConversationRequest(conversation_id=started.conversation_id),
            metadata=client.metadata,
        )
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND


async def test_same_client_message_id_twice_is_one_turn(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    client = await new_client(stack, channel)
    key = unique("cmid")
    first = await client.chat("Remember the milk", client_message_id=key)
    second = await client.chat("Remember the milk", client_message_id=key)
    assert first.started is not None and second.started is not None
    assert not first.started.started.replayed
    assert second.started.started.replayed
    for field in ("conversation_id", "user_message_id", "assistant_message_id"):
        assert getattr(first.started.started, field) == getattr(second.started.started, field)
    assert second.text == first.text
    assert second.done is not None
    await assert_one_turn(client, first.started.started.conversation_id)


async def test_concurrent_calls_with_one_client_message_id_generate_once(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    client = await new_client(stack, channel)
    key = unique("cmid")
    turns = await asyncio.gather(
        *(client.chat("Summarise the meeting", client_message_id=key) for _ in range(4))
    )
    started = [t.started.started for t in turns if t.started is not None]
    assert len(started) == 4
    assert sum(not s.replayed for s in started) == 1
    assert len({s.assistant_message_id for s in started}) == 1
    assert len({t.text for t in turns}) == 1
    await assert_one_turn(client, started[0].conversation_id)


async def assert_one_turn(client: Client, conversation_id: str) -> None:
    async def history() -> gateway_pb2.GetConversationResponse | None:
        response = await client.stub.GetConversation(
            gateway_pb2.GetConversationRequest(conversation_id=conversation_id),
            metadata=client.metadata,
        )
        return response if len(response.messages) >= 2 else None

    response = await poll(history)
    roles = [m.role for m in response.messages]
    assert roles == [resources_pb2.ROLE_USER, resources_pb2.ROLE_ASSISTANT]


async def test_rate_limit_answers_resource_exhausted_with_retry_delay(
    tmp_path: Path, postgres_database: str
) -> None:
    env = {
        **FAST_PACE,
        "CHATPLANE_RATE_LIMIT_PER_MINUTE": "6",
        "CHATPLANE_RATE_LIMIT_BURST": "3",
        "CHATPLANE_POSTGRES_DSN": postgres_database,
    }
    async with (
        running_stack(tmp_path, env) as limited,
        grpc.aio.insecure_channel(limited.info().address("gateway")) as chan,
    ):
        client = Client(chan, await create_key(limited, "t", "u"))
        for _ in range(3):
            await client.stub.ListConversations(
                gateway_pb2.ListConversationsRequest(), metadata=client.metadata
            )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.stub.ListConversations(
                gateway_pb2.ListConversationsRequest(), metadata=client.metadata
            )
        assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        retry = [
            d for d in status_details(raised.value) if isinstance(d, error_details_pb2.RetryInfo)
        ]
        assert len(retry) == 1
        delay = retry[0].retry_delay.ToTimedelta().total_seconds()
        assert 5.0 < delay <= 10.0  # 6/min → one token every 10 s
        # Another principal is not affected.
        other = Client(chan, await create_key(limited, "t", "v"))
        await other.stub.ListConversations(
            gateway_pb2.ListConversationsRequest(), metadata=other.metadata
        )


async def test_log_records_carry_the_callers_trace_context(
    stack: Stack, channel: grpc.aio.Channel, log_dsn: str
) -> None:
    client = await new_client(stack, channel)
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    call = client.stub.Chat(
        gateway_pb2.ChatRequest(text="trace me"),
        metadata=(*client.metadata, ("traceparent", traceparent), ("x-request-id", "req-trace-1")),
        timeout=60,
    )
    turn = Turn()
    async for event in call:
        turn.add(event)
    assert turn.started is not None and turn.done is not None
    conversation = turn.started.started.conversation_id.encode()
    consumer = PostgresMessageLog(log_dsn).consumer(unique("reader"), [MESSAGES_TOPIC])
    try:
        headers = []
        while True:
            batch = await consumer.poll_batch(1000, 0.2)
            if not batch:
                break
            headers += [dict(r.headers) for r in batch if r.key == conversation]
    finally:
        await consumer.close()
    assert len(headers) == 2  # the user message and the answer
    for record_headers in headers:
        assert record_headers["traceparent"] == traceparent.encode()
        assert record_headers["x-request-id"] == b"req-trace-1"


async def test_api_keys_are_issued_with_roles_and_unknown_roles_are_refused(
    stack: Stack,
) -> None:
    owner = admin_resources_pb2.Owner(tenant_id=unique("t"), user_id="u")
    async with stack.channel("persistence") as persistence:
        stub = PersistenceClient(persistence)
        created = await stub.identity.CreateApiKey(
            identity_pb2.CreateApiKeyRequest(owner=owner, roles=["operator", "chat"]),
            timeout=10,
        )
        stored = await stub.identity.GetApiKey(
            identity_pb2.GetApiKeyRequest(key_id=created.key_id), timeout=10
        )
        assert list(stored.roles) == ["chat", "operator"]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.identity.CreateApiKey(
                identity_pb2.CreateApiKeyRequest(owner=owner, roles=["root"]), timeout=10
            )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "roles" in (refused.value.details() or "")


async def test_persistence_lists_every_service_to_health_and_reflection(stack: Stack) -> None:
    """The one Persistence server serves each focused service, and says so to health checks
    and reflection clients (docs/api.md, "Persistence's services")."""
    async with stack.channel("persistence") as persistence:
        reflection = reflection_pb2_grpc.ServerReflectionStub(persistence)
        answers = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        listed = {
            service.name
            async for answer in answers
            for service in answer.list_services_response.service
        }
        assert set(PERSISTENCE_SERVICE_NAMES) <= listed
        assert not {name for name in listed if name.startswith("chatplane.v1.")}
        health = health_pb2_grpc.HealthStub(persistence)
        for name in PERSISTENCE_SERVICE_NAMES:
            status = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert status.status == health_pb2.HealthCheckResponse.SERVING, name
