"""Human handoff through the real services (docs/handoff.md), with Claude answering through
the LLM emulator so that "the bot stays silent" is checked where the model is called: a user
hands a conversation to a person, an operator lists it, replies (the user's watch stream gets
the reply) and releases it; the explicit-request and thumbs-down rules; roles, tenants and
every bad input with its exact status."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2

from chatplane.launcher import Stack
from chatplane.launcher.stack import ServiceProcess
from chatplane.llm_emulator.process import EmulatorProcess, running_emulator
from chatplane.v1 import gateway_pb2, operator_pb2, operator_pb2_grpc, resources_pb2
from tests.integration.stack_client import (
    Client,
    create_key,
    poll,
    running_stack,
    status_details,
    store_dsn,
    unique,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

API_KEY = f"sk-emulator-{uuid.uuid4().hex}"
THUMBS_DOWN_THRESHOLD = 2
HUMAN = resources_pb2.HANDOFF_MODE_HUMAN
BOT = resources_pb2.HANDOFF_MODE_BOT


@dataclass
class Operator:
    """An OperatorService client bound to one key."""

    stub: operator_pb2_grpc.OperatorServiceStub
    metadata: tuple[tuple[str, str], ...]


@dataclass
class Rig:
    emulator: EmulatorProcess
    stack: Stack
    channel: grpc.aio.Channel
    env: dict[str, str]

    async def user(self, tenant: str, user: str = "") -> Client:
        return Client(self.channel, await create_key(self.stack, tenant, user or unique("u")))

    async def operator(self, tenant: str, roles: tuple[str, ...] = ("operator",)) -> Operator:
        key = await create_key(self.stack, tenant, unique("op"), roles)
        return Operator(
            operator_pb2_grpc.OperatorServiceStub(self.channel),
            (("authorization", f"Bearer {key}"),),
        )

    async def model_calls(self) -> int:
        return len(await self.emulator.requests())


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    async with running_emulator("--tokens", "6", "--api-key", API_KEY) as emulator:
        env = {
            "CHATPLANE_LLM_BACKEND": "anthropic",
            "ANTHROPIC_API_KEY": API_KEY,
            "ANTHROPIC_BASE_URL": emulator.url,
            "CHATPLANE_HANDOFF_THUMBS_DOWN_THRESHOLD": str(THUMBS_DOWN_THRESHOLD),
        }
        async with (
            running_stack(tmp_path_factory.mktemp("handoff"), env) as stack,
            grpc.aio.insecure_channel(stack.info().address("gateway")) as channel,
        ):
            yield Rig(emulator, stack, channel, env)


class Watch:
    """A WatchConversation stream read in the background."""

    def __init__(self, client: Client, conversation_id: str) -> None:
        self.call = client.stub.WatchConversation(
            gateway_pb2.WatchConversationRequest(conversation_id=conversation_id),
            metadata=client.metadata,
            timeout=60,
        )
        self.events: asyncio.Queue[gateway_pb2.WatchConversationResponse] = asyncio.Queue()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for event in self.call:
            await self.events.put(event)

    async def next(self) -> gateway_pb2.WatchConversationResponse:
        return await asyncio.wait_for(self.events.get(), 10)

    async def close(self) -> None:
        self.call.cancel()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def answered(client: Client, text: str, conversation_id: str = "") -> str:
    """Chats and checks that the bot answered; returns the conversation id."""
    turn = await client.chat(text, conversation_id)
    assert turn.done is not None, turn.kinds
    assert turn.started is not None
    return turn.started.started.conversation_id


async def handed_off(
    client: Client, text: str, conversation_id: str = ""
) -> resources_pb2.HandoffStatus:
    """Chats and checks that the only event says a human has the conversation."""
    events = [event async for event in client.chat_call(text, conversation_id)]
    assert [event.WhichOneof("event") for event in events] == ["handoff"]
    assert events[0].handoff.mode == HUMAN
    return events[0].handoff


async def history(client: Client, conversation_id: str) -> list[resources_pb2.Message]:
    response = await client.stub.GetConversation(
        gateway_pb2.GetConversationRequest(conversation_id=conversation_id),
        metadata=client.metadata,
    )
    return list(response.messages)


async def rpc_error(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    return raised.value


def violated_field(error: grpc.aio.AioRpcError) -> str:
    bad = [d for d in status_details(error) if isinstance(d, error_details_pb2.BadRequest)]
    assert bad, status_details(error)
    return bad[0].field_violations[0].field


async def test_user_hands_off_operator_replies_then_releases(rig: Rig) -> None:
    tenant = unique("t")
    user = await rig.user(tenant)
    operator = await rig.operator(tenant)
    conversation_id = await answered(user, "Hello there")
    watch = Watch(user, conversation_id)
    try:
        first = await watch.next()
        assert first.handoff.mode == BOT and first.handoff.conversation_id == conversation_id

        requested = await user.stub.RequestHandoff(
            gateway_pb2.RequestHandoffRequest(conversation_id=conversation_id, reason="billing"),
            metadata=user.metadata,
        )
        assert requested.handoff.changed and requested.handoff.mode == HUMAN
        assert requested.handoff.trigger == resources_pb2.HANDOFF_TRIGGER_USER
        assert (await watch.next()).handoff.mode == HUMAN
        again = await user.stub.RequestHandoff(
            gateway_pb2.RequestHandoffRequest(conversation_id=conversation_id),
            metadata=user.metadata,
        )
        assert not again.handoff.changed and again.handoff.reason == "billing"

        # The bot is silent: one `handoff` event, and the model is never called.
        calls = await rig.model_calls()
        await handed_off(user, "Is anybody there?", conversation_id)
        assert await rig.model_calls() == calls

        waiting = await operator.stub.ListWaitingConversations(
            operator_pb2.ListWaitingConversationsRequest(), metadata=operator.metadata
        )
        [listed] = [h for h in waiting.handoffs if h.conversation_id == conversation_id]
        assert listed.reason == "billing" and listed.mode == HUMAN and listed.user_id

        async def user_message_stored() -> bool:
            read = await operator.stub.GetHandedOffConversation(
                operator_pb2.GetHandedOffConversationRequest(conversation_id=conversation_id),
                metadata=operator.metadata,
            )
            return "Is anybody there?" in [m.text for m in read.messages]

        await poll(user_message_stored)

        posted = await operator.stub.PostReply(
            operator_pb2.PostReplyRequest(conversation_id=conversation_id, text="Hi, Sam here."),
            metadata=operator.metadata,
        )
        assert posted.message.role == resources_pb2.ROLE_OPERATOR
        reply = await watch.next()
        assert reply.WhichOneof("event") == "operator_reply"
        assert reply.operator_reply.message_id == posted.message.message_id
        assert reply.operator_reply.text == "Hi, Sam here."

        async def reply_stored() -> list[resources_pb2.Message]:
            return [
                m
                for m in await history(user, conversation_id)
                if m.role == resources_pb2.ROLE_OPERATOR
            ]

        [stored] = await poll(reply_stored)
        assert stored.text == "Hi, Sam here." and stored.operator_id

        released = await operator.stub.ReleaseConversation(
            operator_pb2.ReleaseConversationRequest(conversation_id=conversation_id),
            metadata=operator.metadata,
        )
        assert released.handoff.changed and released.handoff.mode == BOT
        assert released.handoff.trigger == resources_pb2.HANDOFF_TRIGGER_OPERATOR
        assert (await watch.next()).handoff.mode == BOT

        # The bot answers again, and the conversation no longer waits.
        await answered(user, "Thanks, one more question", conversation_id)
        assert await rig.model_calls() == calls + 1
        waiting = await operator.stub.ListWaitingConversations(
            operator_pb2.ListWaitingConversationsRequest(), metadata=operator.metadata
        )
        assert conversation_id not in [h.conversation_id for h in waiting.handoffs]
        # The user can release too.
        await user.stub.RequestHandoff(
            gateway_pb2.RequestHandoffRequest(conversation_id=conversation_id),
            metadata=user.metadata,
        )
        user_release = await user.stub.ReleaseHandoff(
            gateway_pb2.ReleaseHandoffRequest(conversation_id=conversation_id),
            metadata=user.metadata,
        )
        assert user_release.handoff.changed and user_release.handoff.mode == BOT
    finally:
        await watch.close()


@pytest.mark.parametrize(
    "text",
    [
        "Can I talk to a real person please?",
        "I want a human",
        "connect me to an agent",
        "Operator, please!",
        "Ich möchte mit einem Menschen sprechen",
    ],
)
async def test_asking_for_a_person_hands_off_once(rig: Rig, text: str) -> None:
    user = await rig.user(unique("t"))
    conversation_id = await answered(user, "What are your opening hours?")
    calls = await rig.model_calls()
    status = await handed_off(user, text, conversation_id)
    assert status.trigger == resources_pb2.HANDOFF_TRIGGER_EXPLICIT_REQUEST and status.changed
    assert await rig.model_calls() == calls
    await user.stub.ReleaseHandoff(
        gateway_pb2.ReleaseHandoffRequest(conversation_id=conversation_id), metadata=user.metadata
    )
    # The rule has fired in this conversation: asking again gets the bot.
    await answered(user, text, conversation_id)


async def test_first_message_asking_for_a_person_never_reaches_the_model(rig: Rig) -> None:
    user = await rig.user(unique("t"))
    calls = await rig.model_calls()
    status = await handed_off(user, "Please let me speak with a human")
    assert status.conversation_id
    assert await rig.model_calls() == calls


async def test_repeated_thumbs_down_hands_off_once(rig: Rig) -> None:
    user = await rig.user(unique("t"))
    conversation_id = await answered(user, "First question")
    await answered(user, "Second question", conversation_id)

    async def answers() -> list[str]:
        return [
            m.message_id
            for m in await history(user, conversation_id)
            if m.role == resources_pb2.ROLE_ASSISTANT
        ]

    ids = await poll(lambda: _at_least(answers, 2))
    watch = Watch(user, conversation_id)
    try:
        assert (await watch.next()).handoff.mode == BOT
        first = await user.stub.SubmitFeedback(
            gateway_pb2.SubmitFeedbackRequest(
                message_id=ids[0], rating=gateway_pb2.RATING_THUMBS_DOWN
            ),
            metadata=user.metadata,
        )
        assert not first.HasField("handoff")
        second = await user.stub.SubmitFeedback(
            gateway_pb2.SubmitFeedbackRequest(
                message_id=ids[1], rating=gateway_pb2.RATING_THUMBS_DOWN
            ),
            metadata=user.metadata,
        )
        assert second.handoff.mode == HUMAN
        assert second.handoff.trigger == resources_pb2.HANDOFF_TRIGGER_THUMBS_DOWN
        changed = await watch.next()
        assert changed.handoff.trigger == resources_pb2.HANDOFF_TRIGGER_THUMBS_DOWN
        await handed_off(user, "Hello?", conversation_id)
        await user.stub.ReleaseHandoff(
            gateway_pb2.ReleaseHandoffRequest(conversation_id=conversation_id),
            metadata=user.metadata,
        )
        # Fired once: a third thumbs-down does not hand it off again.
        third = await user.stub.SubmitFeedback(
            gateway_pb2.SubmitFeedbackRequest(
                message_id=ids[0], rating=gateway_pb2.RATING_THUMBS_DOWN, comment="still bad"
            ),
            metadata=user.metadata,
        )
        assert not third.HasField("handoff")
    finally:
        await watch.close()


async def _at_least(source, count: int):  # type: ignore[no-untyped-def]
    found = await source()
    return found if len(found) >= count else None


async def test_roles_and_tenants(rig: Rig) -> None:
    tenant = unique("t")
    user = await rig.user(tenant)
    conversation_id = await answered(user, "Hello")
    await user.stub.RequestHandoff(
        gateway_pb2.RequestHandoffRequest(conversation_id=conversation_id),
        metadata=user.metadata,
    )
    chat_only = await rig.operator(tenant, roles=("chat",))
    for call in (
        chat_only.stub.ListWaitingConversations(
            operator_pb2.ListWaitingConversationsRequest(), metadata=chat_only.metadata
        ),
        chat_only.stub.PostReply(
            operator_pb2.PostReplyRequest(conversation_id=conversation_id, text="hi"),
            metadata=chat_only.metadata,
        ),
        chat_only.stub.ReleaseConversation(
            operator_pb2.ReleaseConversationRequest(conversation_id=conversation_id),
            metadata=chat_only.metadata,
        ),
    ):
        assert (await rpc_error(call)).code() == grpc.StatusCode.PERMISSION_DENIED

    stranger = await rig.operator(unique("other-tenant"))
    waiting = await stranger.stub.ListWaitingConversations(
        operator_pb2.ListWaitingConversationsRequest(), metadata=stranger.metadata
    )
    assert conversation_id not in [h.conversation_id for h in waiting.handoffs]
    for call in (
        stranger.stub.GetHandedOffConversation(
            operator_pb2.GetHandedOffConversationRequest(conversation_id=conversation_id),
            metadata=stranger.metadata,
        ),
        stranger.stub.PostReply(
            operator_pb2.PostReplyRequest(conversation_id=conversation_id, text="hi"),
            metadata=stranger.metadata,
        ),
        stranger.stub.ReleaseConversation(
            operator_pb2.ReleaseConversationRequest(conversation_id=conversation_id),
            metadata=stranger.metadata,
        ),
    ):
        assert (await rpc_error(call)).code() == grpc.StatusCode.NOT_FOUND

    # Another user of the same tenant cannot touch or watch the conversation.
    other_user = await rig.user(tenant)
    for call in (
        other_user.stub.RequestHandoff(
            gateway_pb2.RequestHandoffRequest(conversation_id=conversation_id),
            metadata=other_user.metadata,
        ),
        other_user.stub.ReleaseHandoff(
            gateway_pb2.ReleaseHandoffRequest(conversation_id=conversation_id),
            metadata=other_user.metadata,
        ),
    ):
        assert (await rpc_error(call)).code() == grpc.StatusCode.NOT_FOUND
    watch = other_user.stub.WatchConversation(
        gateway_pb2.WatchConversationRequest(conversation_id=conversation_id),
        metadata=other_user.metadata,
        timeout=10,
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in watch:
            pass
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND

    unauthenticated = operator_pb2_grpc.OperatorServiceStub(rig.channel)
    error = await rpc_error(
        unauthenticated.ListWaitingConversations(operator_pb2.ListWaitingConversationsRequest())
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_bad_inputs(rig: Rig) -> None:
    tenant = unique("t")
    user = await rig.user(tenant)
    operator = await rig.operator(tenant)
    conversation_id = await answered(user, "Hello")
    invalid = grpc.StatusCode.INVALID_ARGUMENT

    error = await rpc_error(
        user.stub.RequestHandoff(gateway_pb2.RequestHandoffRequest(), metadata=user.metadata)
    )
    assert error.code() == invalid and violated_field(error) == "conversation_id"
    error = await rpc_error(
        user.stub.RequestHandoff(
            gateway_pb2.RequestHandoffRequest(conversation_id="not-an-id"),
            metadata=user.metadata,
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = await rpc_error(
        user.stub.RequestHandoff(
            gateway_pb2.RequestHandoffRequest(conversation_id=str(uuid.uuid4())),
            metadata=user.metadata,
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    for reason in ("x" * 1025, "nul\x00"):
        error = await rpc_error(
            user.stub.RequestHandoff(
                gateway_pb2.RequestHandoffRequest(conversation_id=conversation_id, reason=reason),
                metadata=user.metadata,
            )
        )
        assert error.code() == invalid and violated_field(error) == "reason"

    # A reply to a conversation the bot has: FAILED_PRECONDITION (once handed off and back).
    await user.stub.RequestHandoff(
        gateway_pb2.RequestHandoffRequest(conversation_id=conversation_id), metadata=user.metadata
    )
    for text in ("", "   ", "a\x00b", "x" * (32 * 1024 + 1)):
        error = await rpc_error(
            operator.stub.PostReply(
                operator_pb2.PostReplyRequest(conversation_id=conversation_id, text=text),
                metadata=operator.metadata,
            )
        )
        assert error.code() == invalid and violated_field(error) == "text"
    await user.stub.ReleaseHandoff(
        gateway_pb2.ReleaseHandoffRequest(conversation_id=conversation_id), metadata=user.metadata
    )
    error = await rpc_error(
        operator.stub.PostReply(
            operator_pb2.PostReplyRequest(conversation_id=conversation_id, text="late"),
            metadata=operator.metadata,
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION

    error = await rpc_error(
        operator.stub.PostReply(
            operator_pb2.PostReplyRequest(text="hi"), metadata=operator.metadata
        )
    )
    assert error.code() == invalid and violated_field(error) == "conversation_id"
    for request, field in (
        (operator_pb2.ListWaitingConversationsRequest(page_size=101), "page_size"),
        (operator_pb2.ListWaitingConversationsRequest(page_size=-1), "page_size"),
        (operator_pb2.ListWaitingConversationsRequest(page_token="garbage!"), "page_token"),
    ):
        error = await rpc_error(
            operator.stub.ListWaitingConversations(request, metadata=operator.metadata)
        )
        assert error.code() == invalid and violated_field(error) == field
    for history_request, field in (
        (operator_pb2.GetHandedOffConversationRequest(page_size=501), "page_size"),
        (operator_pb2.GetHandedOffConversationRequest(page_token="garbage!"), "page_token"),
    ):
        history_request.conversation_id = conversation_id
        error = await rpc_error(
            operator.stub.GetHandedOffConversation(history_request, metadata=operator.metadata)
        )
        assert error.code() == invalid and violated_field(error) == field
    # A conversation never handed off is not an operator's to read.
    fresh = await answered(user, "Another conversation")
    error = await rpc_error(
        operator.stub.GetHandedOffConversation(
            operator_pb2.GetHandedOffConversationRequest(conversation_id=fresh),
            metadata=operator.metadata,
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_an_operator_reply_reaches_a_user_watching_on_another_replica(
    rig: Rig, tmp_path_factory: pytest.TempPathFactory
) -> None:
    info = rig.stack.info()
    args = ["--gateway-port", "0"]
    for dependency in ("agent", "memory", "persistence"):
        args += [f"--{dependency}-address", info.address(dependency)]
    env = {
        **os.environ,
        "CHATPLANE_LLM_BACKEND": "offline",
        **rig.env,
        "CHATPLANE_DATA_DIR": str(rig.stack.data_dir),
        "CHATPLANE_HOST": info.host,
        # The replica shares the stack's own PostgreSQL (the log it watches, the store).
        "CHATPLANE_POSTGRES_DSN": store_dsn(rig.stack.data_dir),
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path_factory.mktemp("replica") / "gateway-2.log"
    replica = await ServiceProcess.start("gateway", args, env, log)
    try:
        async with grpc.aio.insecure_channel(f"{info.host}:{replica.port}") as channel:
            tenant = unique("t")
            user = await rig.user(tenant)
            operator = await rig.operator(tenant)
            conversation_id = await answered(user, "Hello")
            # The user watches on the second replica; everything else goes to the first.
            watch = Watch(_rebound(user, channel), conversation_id)
            try:
                assert (await watch.next()).handoff.mode == BOT
                await user.stub.RequestHandoff(
                    gateway_pb2.RequestHandoffRequest(conversation_id=conversation_id),
                    metadata=user.metadata,
                )
                assert (await watch.next()).handoff.mode == HUMAN
                posted = await operator.stub.PostReply(
                    operator_pb2.PostReplyRequest(conversation_id=conversation_id, text="Hello!"),
                    metadata=operator.metadata,
                )
                reply = await watch.next()
                assert reply.operator_reply.message_id == posted.message.message_id
                # SIGTERM: the replica ends its watches at once (UNAVAILABLE, the client
                # reconnects elsewhere) instead of waiting out its 30 s drain for them.
                began = time.monotonic()
                assert await replica.stop(timeout=25) == 0
                assert time.monotonic() - began < 10
                assert await watch.call.code() == grpc.StatusCode.UNAVAILABLE
            finally:
                await watch.close()
    finally:
        await replica.stop(timeout=10)


def _rebound(client: Client, channel: grpc.aio.Channel) -> Client:
    """The same key on another channel."""
    rebound = Client(channel, "")
    rebound.metadata = client.metadata
    return rebound
