"""Export and the audit of access to other users' data (issue 7; docs/privacy.md "Export",
docs/security.md "Audit log"), on one embedded stack: two users of a tenant, the first with
branches, feedback, a handoff with an operator's reply; the archive (AdminService and
`chatplane export`) holds exactly the first user's data and nothing of the second; each
export, operator read, handoff step and refused attempt is exactly one audit record without
message content, and the chain verifies."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from chatplane.internal.v1 import audit_pb2
from chatplane.launcher import Stack
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    gateway_pb2,
    operator_pb2,
    operator_pb2_grpc,
    resources_pb2,
)
from tests.integration.stack_client import FAST_PACE, Client, create_key, poll, running_stack

pytestmark = pytest.mark.asyncio(loop_scope="module")

TENANT = "privacy-tenant"
ALICE, BOB = "alice", "bob"
CHATPLANE = [sys.executable, "-c", "from chatplane.cli.main import main; main()"]
CHUNK_LIMIT = 64 * 1024
# Polling history until the log is consumed must not run into the rate limit.
ENV = {
    **FAST_PACE,
    "CHATPLANE_RATE_LIMIT_PER_MINUTE": "60000",
    "CHATPLANE_RATE_LIMIT_BURST": "5000",
}


@dataclass
class Seeded:
    stack: Stack
    channel: grpc.aio.Channel
    alice: Client
    bob: Client
    admin_key: str
    operator_key: str
    alice_key: str
    alice_conversations: list[str]
    alice_feedback: dict[str, tuple[int, str]]  # assistant message id -> (score, comment)
    handed_off: str  # Alice's conversation with a human
    canary_a: str
    canary_b: str


def metadata(key: str, request_id: str = "") -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"), ("x-request-id", request_id or uuid.uuid4().hex))


async def tree(client: Client, conversation_id: str) -> list[resources_pb2.Message]:
    response = await client.stub.GetConversation(
        gateway_pb2.GetConversationRequest(
            conversation_id=conversation_id,
            page_size=500,
            view=gateway_pb2.CONVERSATION_VIEW_TREE,
        ),
        metadata=client.metadata,
        timeout=10,
    )
    return list(response.messages)


async def stored(client: Client, conversation_id: str, count: int) -> list[resources_pb2.Message]:
    """The conversation's whole tree once `count` messages are stored (the log is async)."""

    async def ready() -> list[resources_pb2.Message]:
        messages = await tree(client, conversation_id)
        return messages if len(messages) >= count else []

    messages: list[resources_pb2.Message] = await poll(ready, timeout=15)
    return messages


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def seeded(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Seeded]:
    async with (
        running_stack(tmp_path_factory.mktemp("privacy"), ENV) as stack,
        grpc.aio.insecure_channel(stack.info().address("gateway")) as channel,
    ):
        yield await seed(stack, channel)


async def seed(stack: Stack, channel: grpc.aio.Channel) -> Seeded:
    """Alice's and Bob's data in TENANT, stored (also used by the cluster profile's test)."""
    alice_key = await create_key(stack, TENANT, ALICE)
    alice = Client(channel, alice_key)
    bob = Client(channel, await create_key(stack, TENANT, BOB))
    admin_key = await create_key(stack, TENANT, "root", ("admin",))
    operator_key = await create_key(stack, TENANT, "sam", ("operator",))
    canary_a, canary_b = f"zebra{uuid.uuid4().hex[:10]}", f"okapi{uuid.uuid4().hex[:10]}"

    # Alice: a conversation of two turns with a regenerated answer (two branches) and
    # feedback; a second one handed to a person who replies.
    first = await alice.chat(f"My code word is {canary_a}. What is a glacier?")
    assert first.started is not None and first.done is not None
    conversation = first.started.started.conversation_id
    second = await alice.chat("And how fast does it move?", conversation)
    assert second.started is not None
    regenerated = [
        event.WhichOneof("event")
        async for event in alice.stub.Chat(
            gateway_pb2.ChatRequest(
                conversation_id=conversation,
                regenerate_message_id=second.started.started.user_message_id,
            ),
            metadata=alice.metadata,
            timeout=30,
        )
    ]
    assert regenerated[0] == "started" and regenerated[-1] == "done"
    other = await alice.chat("Tell me about tides, please.")
    assert other.started is not None
    handed_off = other.started.started.conversation_id
    await stored(alice, conversation, 5)
    await stored(alice, handed_off, 2)
    feedback = {
        first.started.started.assistant_message_id: (5, "clear and short"),
        second.started.started.assistant_message_id: (2, "too vague"),
    }
    for message_id, (score, comment) in feedback.items():
        await alice.stub.SubmitFeedback(
            gateway_pb2.SubmitFeedbackRequest(
                message_id=message_id,
                rating=gateway_pb2.RATING_THUMBS_UP,
                comment=comment,
                score=score,
            ),
            metadata=alice.metadata,
            timeout=10,
        )
    # Bob: his own conversation and feedback, which must never show up in Alice's export.
    bob_turn = await bob.chat(f"Remember {canary_b} for me, about volcanoes.")
    assert bob_turn.started is not None
    await stored(bob, bob_turn.started.started.conversation_id, 2)
    await bob.stub.SubmitFeedback(
        gateway_pb2.SubmitFeedbackRequest(
            message_id=bob_turn.started.started.assistant_message_id,
            rating=gateway_pb2.RATING_THUMBS_DOWN,
            comment=f"bob says {canary_b}",
            score=1,
        ),
        metadata=bob.metadata,
        timeout=10,
    )
    return Seeded(
        stack,
        channel,
        alice,
        bob,
        admin_key,
        operator_key,
        alice_key,
        [conversation, handed_off],
        feedback,
        handed_off,
        canary_a,
        canary_b,
    )


async def export(seeded: Seeded, user: str, request_id: str = "") -> tuple[bytes, list[int]]:
    """The archive from AdminService, and the size of each chunk."""
    call = admin_pb2_grpc.AdminServiceStub(seeded.channel).ExportUserData(
        admin_pb2.ExportUserDataRequest(user_id=user),
        metadata=metadata(seeded.admin_key, request_id),
        timeout=60,
    )
    chunks = [response.chunk async for response in call]
    return b"".join(chunks), [len(chunk) for chunk in chunks]


async def audit_records(stack: Stack) -> list[audit_pb2.AuditRecord]:
    records: list[audit_pb2.AuditRecord] = []
    async with stack.channel("persistence") as channel:
        stub = PersistenceClient(channel)
        while True:
            page = await stub.audit.ListAuditRecords(
                audit_pb2.ListAuditRecordsRequest(
                    after_seq=records[-1].seq if records else 0, page_size=1000
                ),
                timeout=10,
            )
            records.extend(page.records)
            if len(page.records) < 1000:
                return records


async def records_of(stack: Stack, request_id: str) -> list[audit_pb2.AuditRecord]:
    """The records of one request once there are any; then a pause to catch a second one."""

    async def found() -> list[audit_pb2.AuditRecord]:
        return [r for r in await audit_records(stack) if r.event.request_id == request_id]

    await poll(found, timeout=10)
    await asyncio.sleep(0.5)
    return await found()


def chatplane_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CHATPLANE, "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _content(archive: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in archive.items() if key != "export_time"}


async def test_the_archive_holds_exactly_the_users_data(seeded: Seeded) -> None:
    archive = await check_alices_archive(seeded)

    # The CLI writes the same archive, readable by its owner only.
    target = seeded.stack.data_dir / "exports" / "alice.json"
    result = await asyncio.to_thread(
        chatplane_cli,
        seeded.stack.data_dir,
        "export",
        "--tenant",
        TENANT,
        "--user",
        ALICE,
        "-o",
        str(target),
    )
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert _content(json.loads(target.read_bytes())) == _content(archive)


async def check_alices_archive(seeded: Seeded) -> dict[str, Any]:
    """Exports Alice and checks the archive holds exactly her data; returns it."""
    raw, sizes = await export(seeded, ALICE)
    assert all(0 < size <= CHUNK_LIMIT for size in sizes)
    archive = json.loads(raw)
    assert (archive["format"], archive["version"]) == ("chatplane.user-export", 1)
    assert (archive["tenant_id"], archive["user_id"]) == (TENANT, ALICE)
    # Nothing of Bob: neither his words nor his feedback nor his ids.
    assert seeded.canary_b.encode() not in raw
    assert seeded.canary_a.encode() in raw

    # Every message of every branch of every conversation, with its text.
    expected: dict[str, resources_pb2.Message] = {}
    for conversation_id in seeded.alice_conversations:
        for message in await tree(seeded.alice, conversation_id):
            expected[message.message_id] = message
    conversations = {c["conversation_id"]: c for c in archive["conversations"]}
    assert set(conversations) == set(seeded.alice_conversations)
    exported = {
        m["message_id"]: (c["conversation_id"], m)
        for c in archive["conversations"]
        for m in c["messages"]
    }
    assert set(exported) == set(expected)
    for message_id, (conversation_id, entry) in exported.items():
        message = expected[message_id]
        assert conversation_id == message.conversation_id
        assert entry["text"] == message.text
        assert entry["parent_message_id"] == message.parent_message_id
    first = conversations[seeded.alice_conversations[0]]
    assert len(first["messages"]) == 5  # two turns and a regenerated answer: 2 branches
    assert sum(len(m["sibling_message_ids"]) > 1 for m in first["messages"]) == 2

    # Feedback with score and comment; answer facts for every assistant message.
    assert {f["message_id"]: (f["score"], f["comment"]) for f in archive["feedback"]} == (
        seeded.alice_feedback
    )
    assert all(f["rating"] == "thumbs_up" for f in archive["feedback"])
    assistant = {i for i, (_, m) in exported.items() if m["role"] == "assistant"}
    assert {a["message_id"] for a in archive["answers"]} == assistant
    assert all(a["variant"] for a in archive["answers"])

    # Memory: Alice's remembered turns, in her conversations only.
    assert archive["memory"]
    assert {m["conversation_id"] for m in archive["memory"]} <= set(seeded.alice_conversations)
    assert any(seeded.canary_a in m["text"] for m in archive["memory"])
    assert archive["counts"] == {
        "conversations": 2,
        "messages": len(expected),
        "answers": len(assistant),
        "feedback": 2,
        "memory": len(archive["memory"]),
    }
    return archive


async def test_a_user_without_data_gets_an_empty_archive(seeded: Seeded) -> None:
    empty = dict.fromkeys(("conversations", "messages", "answers", "feedback", "memory"), 0)
    archive = json.loads((await export(seeded, "nobody-here"))[0])
    assert archive["counts"] == empty
    # An admin of another tenant names Alice: their own tenant's (empty) "alice".
    other_admin = await create_key(seeded.stack, "another-tenant", "root", ("admin",))
    call = admin_pb2_grpc.AdminServiceStub(seeded.channel).ExportUserData(
        admin_pb2.ExportUserDataRequest(user_id=ALICE),
        metadata=metadata(other_admin),
        timeout=30,
    )
    raw = b"".join([response.chunk async for response in call])
    assert seeded.canary_a.encode() not in raw
    assert json.loads(raw)["counts"] == empty


async def test_bad_export_requests(seeded: Seeded) -> None:
    stub = admin_pb2_grpc.AdminServiceStub(seeded.channel)
    for user_id in ("", "x" * 257, "a\x00b"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ExportUserData(
                admin_pb2.ExportUserDataRequest(user_id=user_id),
                metadata=metadata(seeded.admin_key),
                timeout=10,
            ).read()
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_each_access_is_exactly_one_audit_record(seeded: Seeded) -> None:
    stack, conversation = seeded.stack, seeded.handed_off
    operator = operator_pb2_grpc.OperatorServiceStub(seeded.channel)
    reply_text = f"Sam here, about {seeded.canary_a}"

    async def one(request_id: str, action: str, outcome: str = "success") -> audit_pb2.AuditEvent:
        (record,) = await records_of(stack, request_id)
        event = record.event
        assert (event.action, event.outcome, event.tenant_id) == (action, outcome, TENANT)
        # No message content in any field.
        fields = (event.actor, event.object, event.detail, event.source)
        assert not any(seeded.canary_a in field or "Sam here" in field for field in fields)
        return event

    rid = uuid.uuid4().hex
    await seeded.alice.stub.RequestHandoff(
        gateway_pb2.RequestHandoffRequest(conversation_id=conversation, reason="please"),
        metadata=metadata(seeded.alice_key, rid),
        timeout=10,
    )
    event = await one(rid, "handoff.request")
    assert (event.actor, event.object) == (f"user:{ALICE}", f"conversation/{conversation}")

    rid = uuid.uuid4().hex
    waiting = await operator.ListWaitingConversations(
        operator_pb2.ListWaitingConversationsRequest(),
        metadata=metadata(seeded.operator_key, rid),
        timeout=10,
    )
    assert conversation in {h.conversation_id for h in waiting.handoffs}
    event = await one(rid, "conversation.operator_read")
    assert event.actor == "user:sam"

    rid = uuid.uuid4().hex
    await operator.GetHandedOffConversation(
        operator_pb2.GetHandedOffConversationRequest(conversation_id=conversation),
        metadata=metadata(seeded.operator_key, rid),
        timeout=10,
    )
    event = await one(rid, "conversation.operator_read")
    assert event.object == f"conversation/{conversation} of user/{ALICE}"

    rid = uuid.uuid4().hex
    await operator.PostReply(
        operator_pb2.PostReplyRequest(conversation_id=conversation, text=reply_text),
        metadata=metadata(seeded.operator_key, rid),
        timeout=10,
    )
    await one(rid, "handoff.reply")

    rid = uuid.uuid4().hex
    await operator.ReleaseConversation(
        operator_pb2.ReleaseConversationRequest(conversation_id=conversation),
        metadata=metadata(seeded.operator_key, rid),
        timeout=10,
    )
    await one(rid, "handoff.release")

    rid = uuid.uuid4().hex
    await seeded.alice.stub.ReleaseHandoff(
        gateway_pb2.ReleaseHandoffRequest(conversation_id=conversation),
        metadata=metadata(seeded.alice_key, rid),
        timeout=10,
    )
    event = await one(rid, "handoff.release")
    assert event.detail == "changed=false"  # the operator released it already

    # A rule handing a conversation over: one record, naming the rule, not the words.
    rid = uuid.uuid4().hex
    events = [
        event.WhichOneof("event")
        async for event in seeded.bob.stub.Chat(
            gateway_pb2.ChatRequest(text="Let me talk to a real person now"),
            metadata=(*seeded.bob.metadata, ("x-request-id", rid)),
            timeout=30,
        )
    ]
    assert events == ["handoff"]
    event = await one(rid, "handoff.request")
    assert (event.actor, event.detail) == (f"user:{BOB}", "rule=explicit_request")

    # An operator reading a conversation of another tenant: a failure, recorded once.
    rid = uuid.uuid4().hex
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await operator.GetHandedOffConversation(
            operator_pb2.GetHandedOffConversationRequest(conversation_id=str(uuid.uuid4())),
            metadata=metadata(seeded.operator_key, rid),
            timeout=10,
        )
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    await one(rid, "conversation.operator_read", "failure")

    rid = uuid.uuid4().hex
    raw, _ = await export(seeded, ALICE, rid)
    event = await one(rid, "user.export")
    assert (event.object, event.detail) == (f"user/{TENANT}/{ALICE}", f"bytes={len(raw)}")

    # Wrong role: denied, recorded once as such, and nothing exported or read.
    for call in (
        lambda rid: (
            admin_pb2_grpc.AdminServiceStub(seeded.channel)
            .ExportUserData(
                admin_pb2.ExportUserDataRequest(user_id=BOB),
                metadata=metadata(seeded.alice_key, rid),
                timeout=10,
            )
            .read()
        ),
        lambda rid: operator.GetHandedOffConversation(
            operator_pb2.GetHandedOffConversationRequest(conversation_id=conversation),
            metadata=metadata(seeded.alice_key, rid),
            timeout=10,
        ),
    ):
        rid = uuid.uuid4().hex
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(rid)
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
        event = await one(rid, "authz.denied", "denied")
        assert event.actor == f"user:{ALICE}"

    # The CLI's export is audited too, and the whole chain verifies.
    before = [r for r in await audit_records(stack) if r.event.actor.startswith("cli:")]
    result = await asyncio.to_thread(
        chatplane_cli, stack.data_dir, "export", "--tenant", TENANT, "--user", BOB
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["user_id"] == BOB
    after = [r for r in await audit_records(stack) if r.event.actor.startswith("cli:")]
    (new,) = after[len(before) :]
    assert (new.event.action, new.event.object) == ("user.export", f"user/{TENANT}/{BOB}")
    verified = await asyncio.to_thread(chatplane_cli, stack.data_dir, "audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("audit chain OK: ")
