"""Encryption at rest in the embedded profile, end to end: a turn with a unique canary string
leaves no plaintext in the message log's table or the system of record's files, reads decrypt
transparently, and destroying the user's data key makes every log record and row of theirs
unreadable while another user's still opens."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import grpc
import psycopg

from chatplane.common.settings import Settings
from chatplane.common.topics import MESSAGES_TOPIC
from chatplane.crypto.envelope import KeyDestroyed, is_sealed
from chatplane.crypto.factory import store_key_source, store_keyring
from chatplane.crypto.keyring import ERASED_TEXT
from chatplane.internal.v1 import data_key_pb2, events_pb2
from chatplane.launcher.stack import POSTGRES_DIR
from chatplane.log import PostgresMessageLog
from chatplane.log.postgres import SCHEMA as LOG_SCHEMA
from chatplane.persistence.client import PersistenceClient
from chatplane.persistence.store.postgres import PostgresConversationStore
from chatplane.v1 import admin_resources_pb2, gateway_pb2, operator_pb2, operator_pb2_grpc
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


def log_plaintext_hits(dsn: str, *needles: str) -> dict[str, int]:
    """How many records of the embedded message log hold each needle (UTF-8) in their key,
    value or headers, as stored."""
    hits = {}
    with psycopg.connect(dsn, autocommit=True) as connection:
        for needle in needles:
            row = connection.execute(
                f"SELECT count(*) FROM {LOG_SCHEMA}.records"
                " WHERE position(%(n)s::bytea IN key) > 0 OR position(%(n)s::bytea IN value) > 0"
                " OR position(%(n)s::bytea IN headers) > 0",
                {"n": needle.encode()},
            ).fetchone()
            assert row is not None
            hits[needle] = int(row[0])
    return hits


def files_with(files: list[Path], *needles: str) -> list[str]:
    """The files holding any of the needles (for a failure's message)."""
    return [str(f) for f in files if any(n.encode() in f.read_bytes() for n in needles)]


def all_files(folder: Path) -> list[Path]:
    """Every file under `folder`."""
    return [p for p in folder.rglob("*") if p.is_file()]


def relation_files(dsn: str, pgdata: Path, schemas: tuple[str, ...]) -> list[Path]:
    """The files of every table, TOAST table and index of these schemas (all segments and
    forks), in the cluster at `pgdata`."""
    with psycopg.connect(dsn) as connection:
        rows = connection.execute(
            """
            WITH owned AS (
                SELECT c.oid, c.reltoastrelid FROM pg_class c
                JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ('r', 'i', 'm')
            ), toast AS (
                SELECT reltoastrelid AS oid FROM owned WHERE reltoastrelid <> 0
            )
            SELECT pg_relation_filepath(oid) FROM owned
            UNION SELECT pg_relation_filepath(oid) FROM toast
            UNION SELECT pg_relation_filepath(indexrelid) FROM pg_index
                WHERE indrelid IN (SELECT oid FROM toast)
            """,
            {"schemas": list(schemas)},
        ).fetchall()
    files = []
    for (relative,) in rows:
        if relative is None:
            continue
        base = pgdata / relative
        fork = re.compile(rf"^{re.escape(base.name)}(\.\d+|_fsm|_vm|_init)?$")
        files += [p for p in base.parent.iterdir() if fork.match(p.name) and p.is_file()]
    return files


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
            persistence = PersistenceClient(persistence_channel)
            owner = admin_resources_pb2.Owner(tenant_id="acme", user_id="alice")
            destroyed = await persistence.data_keys.DestroyUserDataKey(
                data_key_pb2.DestroyUserDataKeyRequest(owner=owner), timeout=10
            )
            assert destroyed.destroyed
            again = await persistence.data_keys.DestroyUserDataKey(
                data_key_pb2.DestroyUserDataKeyRequest(owner=owner), timeout=10
            )
            assert not again.destroyed
        erased = await _history(alice, started.conversation_id)
        assert [m.text for m in erased.messages] == [ERASED_TEXT] * 3
        assert canary not in erased.conversation.title
        assert (await _history(bob, bob_conversation)).messages[0].text == (
            f"bob writes {bob_canary}"
        )

    # At rest: the log's records (as stored) and the files of every relation of the log and
    # the system of record (tables, TOAST, indexes; flushed by the shutdown checkpoint) never
    # held either canary. The WAL is not scanned: the memory index writes its text there.
    async with stack_database(data_dir) as dsn:
        assert log_plaintext_hits(dsn, canary, bob_canary) == {canary: 0, bob_canary: 0}
        pgdata = (data_dir / POSTGRES_DIR).resolve()
        files = relation_files(dsn, pgdata, ("public", LOG_SCHEMA))
        index = relation_files(dsn, pgdata, ("memory",))
    assert len(files) > 10, files
    assert plaintext_hits(files, canary, bob_canary) == {canary: 0, bob_canary: 0}, files_with(
        files, canary, bob_canary
    )
    # The scan does find plaintext where it is: the memory index keeps the text to search it
    # (docs/security.md: erasure deletes it there).
    assert plaintext_hits(index, canary)[canary] > 0

    # Every log record of alice's fails to open; bob's still does.
    async with stack_database(data_dir) as dsn:
        store = await PostgresConversationStore.open(dsn, pool_max_size=2)
        await _check_shredded(data_dir, dsn, store, bob_canary)


async def _check_shredded(
    data_dir: Path, log_dsn: str, store: PostgresConversationStore, bob_canary: str
) -> None:
    settings = Settings(data_dir=data_dir)
    keyring = store_keyring(settings, store_key_source(settings, store))
    consumer = PostgresMessageLog(log_dsn).consumer("canary-check", [MESSAGES_TOPIC])
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
