"""Encryption at rest in the cluster profile, on real PostgreSQL and Kafka: a turn written as
the Agent writes it (sealed MessageRecorded records on Kafka) and stored by Persistence's batch
consumer through the direct binary COPY leaves no plaintext in Kafka's log segments or in
PostgreSQL's data directory (after a CHECKPOINT); reads decrypt; destroying the user's data key
makes every Kafka record of theirs fail to decrypt while another user's still decrypts."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from chatplane.common.ids import new_id
from chatplane.common.topics import MESSAGE_SCHEMA_VERSION, MESSAGES_DLQ_TOPIC, MESSAGES_TOPIC
from chatplane.crypto.envelope import KeyDestroyed, is_sealed
from chatplane.crypto.kek import new_kek_line, parse_keks
from chatplane.crypto.keyring import ERASED_TEXT, Keyring, StoreKeySource
from chatplane.crypto.log_records import sealed_message
from chatplane.crypto.sealed_store import sealed_store
from chatplane.internal.v1 import events_pb2
from chatplane.log import LogRecord
from chatplane.log.kafka import KafkaMessageLog
from chatplane.persistence.consumer import BatchConsumer
from chatplane.persistence.store.base import Feedback, Owner, Rating, TurnRequest
from chatplane.persistence.store.postgres import PostgresConversationStore
from chatplane.v1 import resources_pb2
from tests.cluster.cluster_fixtures import stop_engines
from tests.engine_processes import ENGINES_PY, Engines, load_engines
from tests.integration.test_encryption_at_rest import all_files, files_with, plaintext_hits

pytestmark = pytest.mark.engines


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    """PostgreSQL and Kafka of this module's own (their data directories are scanned)."""
    state_dir = tmp_path_factory.mktemp("crypto-engines")
    proc = subprocess.run(
        [
            sys.executable,
            str(ENGINES_PY),
            "up",
            "--only",
            "postgres,kafka",
            "--state-dir",
            state_dir,
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"engines up failed:\n{proc.stderr[-4000:]}", pytrace=False)
    running = load_engines(state_dir)
    try:
        yield running
    finally:
        stop_engines(running)


def _messages(conversation_id: str, text: str) -> list[resources_pb2.Message]:
    user_id, answer_id = new_id(), new_id()
    now_ms = int(time.time() * 1000)
    user = resources_pb2.Message(
        message_id=user_id,
        conversation_id=conversation_id,
        role=resources_pb2.ROLE_USER,
        text=text,
        status=resources_pb2.MESSAGE_STATUS_COMPLETE,
        parent_message_id="",
    )
    answer = resources_pb2.Message(
        message_id=answer_id,
        conversation_id=conversation_id,
        role=resources_pb2.ROLE_ASSISTANT,
        text=f"you said: {text}",
        status=resources_pb2.MESSAGE_STATUS_COMPLETE,
        reply_to_message_id=user_id,
        parent_message_id=user_id,
    )
    user.create_time.FromMilliseconds(now_ms)
    answer.create_time.FromMilliseconds(now_ms + 1)
    return [user, answer]


@pytest.fixture
async def keyring_and_store(
    engines: Engines,
) -> AsyncIterator[tuple[Keyring, PostgresConversationStore]]:
    store = await PostgresConversationStore.open(
        engines.env["CHATPLANE_POSTGRES_DSN"], pool_max_size=2
    )
    keks = parse_keks(new_kek_line("test-1"), "test")
    try:
        yield Keyring(StoreKeySource(store.data_keys, keks), keks, 5.0), store
    finally:
        await store.close()


async def test_kafka_and_postgres_hold_no_plaintext_and_shredding_works(
    engines: Engines, keyring_and_store: tuple[Keyring, PostgresConversationStore]
) -> None:
    keyring, raw_store = keyring_and_store
    store = sealed_store(raw_store, keyring)
    canary = f"CANARY{uuid.uuid4().hex}"
    bob_canary = f"BOBCANARY{uuid.uuid4().hex}"
    alice, bob = Owner("acme", f"alice-{uuid.uuid4().hex[:6]}"), Owner("acme", "bob")
    # A turn begun with a title (what BeginTurn keeps), then both users' messages on Kafka.
    reservation = await store.begin_turn(
        TurnRequest(
            owner=alice,
            conversation_id="",
            client_message_id=new_id(),
            user_message_id=new_id(),
            assistant_message_id=new_id(),
            title=f"about {canary}",
            lease=timedelta(seconds=30),
        )
    )
    assert reservation.acquired
    alice_conversation, bob_conversation = reservation.conversation_id, new_id()
    kafka = KafkaMessageLog(
        engines.env["CHATPLANE_KAFKA_BOOTSTRAP"],
        partitions=1,
        topics=(MESSAGES_TOPIC, MESSAGES_DLQ_TOPIC),
    )
    producer = kafka.producer()
    records = []
    for owner, conversation_id, text in (
        (alice, alice_conversation, f"keep {canary} safe"),
        (bob, bob_conversation, f"bob writes {bob_canary}"),
    ):
        for message in _messages(conversation_id, text):
            sealed = await sealed_message(keyring, owner.tenant_id, owner.user_id, message)
            records.append(
                LogRecord(
                    MESSAGES_TOPIC,
                    conversation_id.encode(),
                    events_pb2.MessageRecorded(
                        schema_version=MESSAGE_SCHEMA_VERSION,
                        tenant_id=owner.tenant_id,
                        user_id=owner.user_id,
                        message=sealed,
                    ).SerializeToString(),
                )
            )
    await producer.append(records, timeout=30)
    # Persistence's batch path: decode, store through the COPY, commit.
    consumer = kafka.consumer("chatplane-persistence-crypto", [MESSAGES_TOPIC])
    batch_consumer = BatchConsumer(consumer, producer, store, max_records=100, max_wait=0.5)
    polled: list = []  # type: ignore[type-arg]
    deadline = time.monotonic() + 60
    while len(polled) < len(records) and time.monotonic() < deadline:
        polled += await consumer.poll_batch(100, 1.0)
    await batch_consumer.process_batch(polled)
    await consumer.close()

    history = await store.get_conversation(alice, alice_conversation, limit=10)
    assert [m.text for m in history.messages] == [
        f"keep {canary} safe",
        f"you said: keep {canary} safe",
    ]
    assert history.conversation.title == f"about {canary}"
    await store.submit_feedback(
        alice, Feedback(history.messages[1].message_id, Rating.THUMBS_UP, f"note {canary}")
    )
    stored_bob = await store.get_conversation(bob, bob_conversation, limit=10)
    assert stored_bob.messages[0].text == f"bob writes {bob_canary}"
    assert canary in (await store.list_conversations(alice, limit=5)).conversations[0].title

    # On disk, after a CHECKPOINT: no canary in PostgreSQL's files or Kafka's segments, while
    # the ids written in clear are found (so the scan reads where the data is).
    port = engines.env["CHATPLANE_POSTGRES_PORT"]
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as pg:
        pg.execute("CHECKPOINT")
    pgdata = Path(str(engines.state["postgres"]["extra"]["pgdata"]))  # type: ignore[index]
    kafka_data = Path(str(engines.state["kafka"]["work_dir"])) / "data"
    pg_files, kafka_files = all_files(pgdata), all_files(kafka_data)
    needles = (canary, bob_canary, alice_conversation)
    pg_hits = plaintext_hits(pg_files, *needles)
    kafka_hits = plaintext_hits(kafka_files, *needles)
    assert pg_hits[canary] == pg_hits[bob_canary] == 0, files_with(pg_files, canary, bob_canary)
    assert kafka_hits[canary] == kafka_hits[bob_canary] == 0, files_with(
        kafka_files, canary, bob_canary
    )
    assert pg_hits[alice_conversation] > 0 and kafka_hits[alice_conversation] > 0

    # Crypto-shredding: every Kafka record of alice's fails to decrypt; bob's still does.
    assert await keyring.destroy_user_key(alice.tenant_id, alice.user_id) is True
    reader = kafka.consumer(f"check-{uuid.uuid4().hex[:6]}", [MESSAGES_TOPIC])
    seen: list = []  # type: ignore[type-arg]
    deadline = time.monotonic() + 60
    while len(seen) < len(records) and time.monotonic() < deadline:
        seen += [
            r
            for r in await reader.poll_batch(100, 1.0)
            if r.key in (alice_conversation.encode(), bob_conversation.encode())
        ]
    await reader.close()
    await producer.close()
    assert len(seen) == len(records)
    shredded, bob_texts = 0, []
    for record in seen:
        recorded = events_pb2.MessageRecorded.FromString(record.value)
        assert is_sealed(recorded.message.text)
        try:
            text = await keyring.open(
                recorded.tenant_id,
                recorded.user_id,
                recorded.message.text,
                recorded.message.message_id,
            )
        except KeyDestroyed:
            assert recorded.user_id == alice.user_id
            shredded += 1
        else:
            assert recorded.user_id == bob.user_id
            bob_texts.append(text)
    assert shredded == 2 and f"bob writes {bob_canary}" in bob_texts
    erased = await store.get_conversation(alice, alice_conversation, limit=10)
    assert [m.text for m in erased.messages] == [ERASED_TEXT, ERASED_TEXT]
    assert erased.conversation.title == ERASED_TEXT
