"""Encryption at rest in the embedded profile, end to end: a turn with a unique canary string
leaves no plaintext in the message log's or the system of record's files, reads decrypt
transparently, and destroying the user's data key makes every log record and row of theirs
unreadable while another user's still opens."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc

from chatplane.common.settings import Settings
from chatplane.common.topics import MESSAGES_TOPIC
from chatplane.crypto.envelope import KeyDestroyed, is_sealed
from chatplane.crypto.factory import store_key_source, store_keyring
from chatplane.crypto.keyring import ERASED_TEXT
from chatplane.log import EmbeddedMessageLog
from chatplane.persistence.store.postgres import PostgresConversationStore
from chatplane.v1 import (
    events_pb2,
    gateway_pb2,
    operator_pb2,
    operator_pb2_grpc,
    persistence_pb2,
    persistence_pb2_grpc,
)
from tests.integration.stack_client import (
    FAST_PACE,
    Client,
    create_key,
    poll,
    running_stack,
    stack_database,
)

ENV = {
    **FAST_PACE,
    "CHATPLANE_RATE_LIMIT_PER_MINUTE": "6000",
    "CHATPLANE_RATE_LIMIT_BURST": "200",
}


def plaintext_hits(files: list[Path], *needles: str) -> dict[str, int]:
    """How often each needle occurs in the files' bytes (UTF-8, as SQLite and PostgreSQL
    store short text)."""
    hits = {needle: 0 for needle in needles}
    for file in files:
        data = file.read_bytes()
        for needle in needles:
            hits[needle] += data.count(needle.encode())
    return hits


def files_with(files: list[Path], *needles: str) -> list[str]:
    """The files holding any of the needles (for a failure's message)."""
    return [str(f) for f in files if any(n.encode() in f.read_bytes() for n in needles)]


def all_files(folder: Path) -> list[Path]:
    """Every file under `folder`."""
    return [p for p in folder.rglob("*") if p.is_file()]


async def _history(client: Client, conversation_id: str) -> gateway_pb2.GetConversationResponse:
    return await client.stub.GetConversation(
        # The whole tree: the operator's reply (no parent) is not on the bot's branch.
        gateway_pb2.GetConversationRequest(
            conversation_id=conversation_id, view=gateway_pb2.CONVERSATION_VIEW_TREE
        ),
        metadata=client.metadata,
        timeout=10,
    )


async def test_embedded_log_and_store_hold_no_plaintext_and_shredding_works(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "stack"
    canary = f"CANARY{uuid.uuid4().hex}"
    bob_canary = f"BOBCANARY{uuid.uuid4().hex}"
    async with (
        running_stack(data_dir, ENV) as stack,
        grpc.aio.insecure_channel(stack.info().address("gateway")) as channel,
    ):
        alice = Client(channel, await create_key(stack, "acme", "alice"))
        bob = Client(channel, await create_key(stack, "acme", "bob"))
        turn = await alice.chat(f"please keep {canary} safe")
        assert turn.started is not None and turn.done is not None
        started = turn.started.started
        bob_turn = await bob.chat(f"bob writes {bob_canary}")
        assert bob_turn.started is not None
        bob_conversation = bob_turn.started.started.conversation_id

        async def stored() -> gateway_pb2.GetConversationResponse | None:
            history = await _history(alice, started.conversation_id)
            return history if len(history.messages) == 2 else None

        # Reads decrypt transparently: the text, the title, and the answer.
        history = await poll(stored)
        assert history.messages[0].text == f"please keep {canary} safe"
        assert history.messages[1].text == turn.text
        assert canary in history.conversation.title
        await alice.stub.SubmitFeedback(
            gateway_pb2.SubmitFeedbackRequest(
                message_id=started.assistant_message_id,
                rating=gateway_pb2.RATING_THUMBS_UP,
                comment=f"feedback about {canary}",
            ),
            metadata=alice.metadata,
            timeout=10,
        )
        await poll(lambda: _bob_stored(bob, bob_conversation))
        # A person takes over: the user's reason and the operator's reply are personal too.
        operator_key = await create_key(stack, "acme", "op", ("operator",))
        operator = operator_pb2_grpc.OperatorServiceStub(channel)
        await alice.stub.RequestHandoff(
            gateway_pb2.RequestHandoffRequest(
                conversation_id=started.conversation_id, reason=f"reason {canary}"
            ),
            metadata=alice.metadata,
            timeout=10,
        )
        await operator.PostReply(
            operator_pb2.PostReplyRequest(
                conversation_id=started.conversation_id, text=f"operator says {canary}"
            ),
            metadata=(("authorization", f"Bearer {operator_key}"),),
            timeout=10,
        )

        async def replied() -> gateway_pb2.GetConversationResponse | None:
            history = await _history(alice, started.conversation_id)
            return history if len(history.messages) == 3 else None

        assert (await poll(replied)).messages[2].text == f"operator says {canary}"

        # Crypto-shredding: alice's key goes; her history reads as erased, not an error.
        async with stack.channel("persistence") as persistence_channel:
            persistence = persistence_pb2_grpc.PersistenceServiceStub(persistence_channel)
            owner = persistence_pb2.Owner(tenant_id="acme", user_id="alice")
            destroyed = await persistence.DestroyUserDataKey(
                persistence_pb2.DestroyUserDataKeyRequest(owner=owner), timeout=10
            )
            assert destroyed.destroyed
            again = await persistence.DestroyUserDataKey(
                persistence_pb2.DestroyUserDataKeyRequest(owner=owner), timeout=10
            )
            assert not again.destroyed
        erased = await _history(alice, started.conversation_id)
        assert [m.text for m in erased.messages] == [ERASED_TEXT] * 3
        assert canary not in erased.conversation.title
        assert (await _history(bob, bob_conversation)).messages[0].text == (
            f"bob writes {bob_canary}"
        )

    # On disk: the log and the store (PostgreSQL's tables and WAL) never held either canary.
    store_files = all_files(data_dir / "postgres")
    assert any(p.parent.name == "pg_wal" for p in store_files)
    files = [p for p in data_dir.iterdir() if p.name.startswith("log.db")] + store_files
    assert plaintext_hits(files, canary, bob_canary) == {canary: 0, bob_canary: 0}
    # The scan does find plaintext where it is: the memory index keeps the text to search it
    # (docs/security.md: erasure deletes it there).
    index = [p for p in data_dir.iterdir() if p.name.startswith("memory.db")]
    assert plaintext_hits(index, canary)[canary] > 0

    # Every log record of alice's fails to open; bob's still does.
    async with stack_database(data_dir) as dsn:
        store = await PostgresConversationStore.open(dsn, pool_max_size=2)
        await _check_shredded(data_dir, store, bob_canary)


async def _check_shredded(
    data_dir: Path, store: PostgresConversationStore, bob_canary: str
) -> None:
    settings = Settings(data_dir=data_dir)
    keyring = store_keyring(settings, store_key_source(settings, store))
    consumer = EmbeddedMessageLog(data_dir / "log.db").consumer("canary-check", [MESSAGES_TOPIC])
    opened: dict[str, list[str]] = {"alice": [], "bob": []}
    shredded = 0
    try:
        while batch := await consumer.poll_batch(1000, 0.2):
            for record in batch:
                recorded = events_pb2.MessageRecorded.FromString(record.value)
                text = recorded.message.text
                assert is_sealed(text)
                try:
                    opened[recorded.user_id].append(
                        await keyring.open(
                            recorded.tenant_id, recorded.user_id, text, recorded.message.message_id
                        )
                    )
                except KeyDestroyed:
                    assert recorded.user_id == "alice"
                    shredded += 1
    finally:
        await consumer.close()
        await store.close()
    assert shredded == 3 and opened["alice"] == []
    assert f"bob writes {bob_canary}" in opened["bob"]


async def _bob_stored(bob: Client, conversation_id: str) -> bool:
    return len((await _history(bob, conversation_id)).messages) == 2
