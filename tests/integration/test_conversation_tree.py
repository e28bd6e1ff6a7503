"""Regenerate and edit through the real services (embedded profile) answering with Claude
through the LLM emulator, so that what the model was sent can be read back: siblings in the
conversation tree, the active branch and the tree views, switching branches, the context of
a new branch (its ancestors only), idempotency keys, and every bad input with its exact code
(docs/conversation-tree.md)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2

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

API_KEY = f"sk-emulator-{uuid.uuid4().hex}"


@dataclass
class Rig:
    """The emulator and a stack whose Agent answers with Claude through it."""

    emulator: EmulatorProcess
    stack: Stack
    channel: grpc.aio.Channel

    async def client(self) -> Client:
        return Client(self.channel, await create_key(self.stack, unique("t"), "u"))

    async def sent(self, since: int) -> list[dict[str, Any]]:
        """The Messages API bodies the emulator received after the first `since`."""
        return [r["body"] for r in (await self.emulator.requests())[since:]]

    async def count(self) -> int:
        return len(await self.emulator.requests())


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    async with running_emulator("--tokens", "6", "--api-key", API_KEY) as emulator:
        env = {
            "CHATPLANE_LLM_BACKEND": "auto",
            "ANTHROPIC_API_KEY": API_KEY,
            "ANTHROPIC_BASE_URL": emulator.url,
            "CHATPLANE_LLM_MODEL": "claude-tree",
            "CHATPLANE_RATE_LIMIT_PER_MINUTE": "6000",
            "CHATPLANE_RATE_LIMIT_BURST": "200",
        }
        async with (
            running_stack(tmp_path_factory.mktemp("tree"), env) as stack,
            grpc.aio.insecure_channel(stack.info().address("gateway")) as channel,
        ):
            yield Rig(emulator, stack, channel)


async def chat(client: Client, **fields: str) -> Turn:
    turn = Turn()
    async for event in client.stub.Chat(
        gateway_pb2.ChatRequest(**fields), metadata=client.metadata, timeout=60
    ):
        turn.add(event)
    assert turn.done is not None
    return turn


def started(turn: Turn) -> resources_pb2.TurnStarted:
    assert turn.started is not None
    return turn.started.started


async def conversation(
    client: Client,
    conversation_id: str,
    view: gateway_pb2.ConversationView.ValueType = gateway_pb2.CONVERSATION_VIEW_UNSPECIFIED,
) -> gateway_pb2.GetConversationResponse:
    return await client.stub.GetConversation(
        gateway_pb2.GetConversationRequest(conversation_id=conversation_id, view=view),
        metadata=client.metadata,
    )


async def stored_tree(
    client: Client, conversation_id: str, count: int
) -> gateway_pb2.GetConversationResponse:
    """The tree view once `count` messages are stored (history follows `done` by a batch)."""

    async def ready() -> gateway_pb2.GetConversationResponse | None:
        tree = await conversation(client, conversation_id, gateway_pb2.CONVERSATION_VIEW_TREE)
        return tree if len(tree.messages) == count else None

    found: gateway_pb2.GetConversationResponse = await poll(ready)
    return found


def sent_text(body: dict[str, Any]) -> str:
    """Everything the model was sent: system blocks (with recalled passages) and messages."""
    return json.dumps(body["system"]) + json.dumps(body["messages"])


async def test_regenerate_twice_keeps_three_answers_and_shows_the_newest(rig: Rig) -> None:
    client = await rig.client()
    first = started(await chat(client, text="Tell me about quasar-lemon"))
    before = await rig.count()
    answers = [first.assistant_message_id]
    for _ in range(2):
        again = started(
            await chat(
                client,
                conversation_id=first.conversation_id,
                regenerate_message_id=first.user_message_id,
            )
        )
        assert again.user_message_id == first.user_message_id
        assert again.conversation_id == first.conversation_id
        assert again.assistant_message_id not in answers
        answers.append(again.assistant_message_id)
    # Each regenerate asked the model the same question, with no other history.
    for body in await rig.sent(before):
        assert body["messages"] == [{"role": "user", "content": "Tell me about quasar-lemon"}]
    tree = await stored_tree(client, first.conversation_id, 4)
    assert [m.message_id for m in tree.messages] == [first.user_message_id, *answers]
    assert [m.parent_message_id for m in tree.messages] == ["", *[first.user_message_id] * 3]
    assert [(m.sibling_index, m.sibling_count) for m in tree.messages[1:]] == [
        (0, 3),
        (1, 3),
        (2, 3),
    ]
    branch = await conversation(client, first.conversation_id)
    assert [m.message_id for m in branch.messages] == [first.user_message_id, answers[-1]]
    assert list(branch.messages[1].sibling_message_ids) == answers
    assert branch.conversation.active_message_id == answers[-1]
    assert branch.conversation.message_count == 4
    # "< 1/3 >": switch to the first answer.
    switched = await client.stub.SetActiveBranch(
        gateway_pb2.SetActiveBranchRequest(
            conversation_id=first.conversation_id, message_id=answers[0]
        ),
        metadata=client.metadata,
    )
    assert switched.conversation.active_message_id == answers[0]
    branch = await conversation(client, first.conversation_id)
    assert [m.message_id for m in branch.messages] == [first.user_message_id, answers[0]]


async def test_editing_a_middle_message_answers_from_its_ancestors_only(rig: Rig) -> None:
    tenant = unique("t")
    client = Client(rig.channel, await create_key(rig.stack, tenant, "u"))
    one = started(await chat(client, text="My favourite colour is crimson-alpha"))
    conversation_id = one.conversation_id
    two = started(
        await chat(
            client, conversation_id=conversation_id, text="My pet is a ferret named zeta-quux"
        )
    )
    three = started(
        await chat(client, conversation_id=conversation_id, text="Where does vortex-nine live?")
    )
    await stored_tree(client, conversation_id, 6)
    # Indexed, so that recall could bring them back: the model must still not see them.
    await wait_until_indexed(rig.stack, tenant, "u", "ferret zeta-quux", two.user_message_id)
    await wait_until_indexed(rig.stack, tenant, "u", "vortex-nine", three.user_message_id)
    before = await rig.count()
    edited = started(
        await chat(
            client,
            conversation_id=conversation_id,
            edit_message_id=two.user_message_id,
            text="My pet is a parrot named omega-pix",
        )
    )
    assert edited.user_message_id not in (two.user_message_id, three.user_message_id)
    (body,) = await rig.sent(before)
    # The model saw the first turn and the edited question; nothing of the replaced message
    # or of what followed it, neither as history nor recalled from memory.
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][0]["content"] == "My favourite colour is crimson-alpha"
    assert body["messages"][-1]["content"] == "My pet is a parrot named omega-pix"
    assert "zeta-quux" not in sent_text(body)
    assert "vortex-nine" not in sent_text(body)
    # The next turn continues the new branch, with the new branch as its history.
    before = await rig.count()
    follow = started(
        await chat(client, conversation_id=conversation_id, text="What is my pet called?")
    )
    (body,) = await rig.sent(before)
    assert "omega-pix" in json.dumps(body["messages"])
    assert "zeta-quux" not in sent_text(body) and "vortex-nine" not in sent_text(body)
    tree = await stored_tree(client, conversation_id, 10)
    edited_message = next(m for m in tree.messages if m.message_id == edited.user_message_id)
    assert edited_message.parent_message_id == one.assistant_message_id
    assert list(edited_message.sibling_message_ids) == [
        two.user_message_id,
        edited.user_message_id,
    ]
    branch = await conversation(client, conversation_id)
    assert [m.message_id for m in branch.messages] == [
        one.user_message_id,
        one.assistant_message_id,
        edited.user_message_id,
        edited.assistant_message_id,
        follow.user_message_id,
        follow.assistant_message_id,
    ]
    assert branch.messages[2].sibling_index == 1 and branch.messages[2].sibling_count == 2
    # Back to the original branch: through the replaced message, down to its newest end.
    switched = await client.stub.SetActiveBranch(
        gateway_pb2.SetActiveBranchRequest(
            conversation_id=conversation_id, message_id=two.user_message_id
        ),
        metadata=client.metadata,
    )
    assert switched.conversation.active_message_id == three.assistant_message_id
    branch = await conversation(client, conversation_id)
    assert [m.message_id for m in branch.messages][2:] == [
        two.user_message_id,
        two.assistant_message_id,
        three.user_message_id,
        three.assistant_message_id,
    ]


async def test_a_regenerate_with_an_idempotency_key_runs_once(rig: Rig) -> None:
    client = await rig.client()
    first = started(await chat(client, text="Once only"))
    before = await rig.count()
    key = unique("regen")
    fields = {"regenerate_message_id": first.user_message_id, "client_message_id": key}
    original = await chat(client, **fields)
    replay = await chat(client, **fields)
    assert started(replay).replayed
    assert started(replay).assistant_message_id == started(original).assistant_message_id
    assert started(replay).user_message_id == first.user_message_id
    assert replay.text == original.text
    assert await rig.count() == before + 1


def bad_request_field(error: grpc.aio.AioRpcError) -> str:
    (bad,) = [d for d in status_details(error) if isinstance(d, error_details_pb2.BadRequest)]
    return bad.field_violations[0].field


async def expect(code: grpc.StatusCode, call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == code, raised.value.details()
    return raised.value


async def test_bad_branch_requests_have_exact_codes(rig: Rig) -> None:
    client = await rig.client()
    stranger = await rig.client()
    first = started(await chat(client, text="Something to branch from"))
    theirs = started(await chat(stranger, text="Not yours"))
    await stored_tree(client, first.conversation_id, 2)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    wrong = await expect(invalid, chat(client, regenerate_message_id=first.assistant_message_id))
    assert bad_request_field(wrong) == "regenerate_message_id"
    wrong = await expect(
        invalid, chat(client, edit_message_id=first.assistant_message_id, text="x")
    )
    assert bad_request_field(wrong) == "edit_message_id"
    with_text = await expect(
        invalid, chat(client, regenerate_message_id=first.user_message_id, text="x")
    )
    assert bad_request_field(with_text) == "text"
    no_text = await expect(invalid, chat(client, edit_message_id=first.user_message_id))
    assert bad_request_field(no_text) == "text"
    missing = grpc.StatusCode.NOT_FOUND
    for target in (str(uuid.uuid4()), "not-an-id", theirs.user_message_id):
        await expect(missing, chat(client, regenerate_message_id=target))
        await expect(missing, chat(client, edit_message_id=target, text="x"))
    await expect(
        missing,
        chat(
            client,
            conversation_id=theirs.conversation_id,
            regenerate_message_id=first.user_message_id,
        ),
    )
    for conversation_id, message_id in (
        (first.conversation_id, theirs.user_message_id),
        (theirs.conversation_id, theirs.user_message_id),
        (first.conversation_id, "nope"),
    ):
        await expect(
            missing,
            client.stub.SetActiveBranch(
                gateway_pb2.SetActiveBranchRequest(
                    conversation_id=conversation_id, message_id=message_id
                ),
                metadata=client.metadata,
            ),
        )
    empty = await expect(
        invalid,
        client.stub.SetActiveBranch(
            gateway_pb2.SetActiveBranchRequest(conversation_id=first.conversation_id),
            metadata=client.metadata,
        ),
    )
    assert bad_request_field(empty) == "message_id"
    view = await expect(
        invalid,
        client.stub.GetConversation(
            gateway_pb2.GetConversationRequest(conversation_id=first.conversation_id, view=9),  # type: ignore[arg-type]
            metadata=client.metadata,
        ),
    )
    assert bad_request_field(view) == "view"
    # A message whose answer is still streaming cannot be regenerated or edited yet.
    await rig.emulator.set_rules(
        [{"times": 1, "behaviour": {"tokens": 60, "tokens_per_second": 4}}]
    )
    slow = client.stub.Chat(
        gateway_pb2.ChatRequest(conversation_id=first.conversation_id, text="A long one"),
        metadata=client.metadata,
        timeout=60,
    )
    try:
        event = await slow.read()
        assert isinstance(event, gateway_pb2.ChatResponse)
        streaming = event.started.user_message_id
        await expect(
            grpc.StatusCode.FAILED_PRECONDITION, chat(client, regenerate_message_id=streaming)
        )
        await expect(
            grpc.StatusCode.FAILED_PRECONDITION,
            chat(client, edit_message_id=streaming, text="changed my mind"),
        )
    finally:
        slow.cancel()
        await rig.emulator.set_rules([])
