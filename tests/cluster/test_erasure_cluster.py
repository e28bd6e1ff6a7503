"""Erasure in the cluster profile (docs/privacy.md) on the session's PostgreSQL, Kafka and
OpenSearch: a user whose messages carry a unique canary is erased through AdminService;
then PostgreSQL holds no row of theirs with it, OpenSearch finds none of their turns by search
nor by GET of the ids it had, every Kafka record of theirs fails to decrypt (their data key
is destroyed; the non-compacted topics keep the records until retention), and another user
of the tenant keeps everything. On a compacted topic the eraser writes tombstones for the
user's conversations."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import opensearchpy
import psycopg
import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from chatplane.common.ids import new_id
from chatplane.common.settings import Settings
from chatplane.common.topics import MESSAGES_TOPIC
from chatplane.crypto.envelope import KeyDestroyed, is_sealed
from chatplane.crypto.factory import store_key_source, store_keyring
from chatplane.internal.v1 import events_pb2
from chatplane.log.record_erasure import KafkaLogEraser
from chatplane.persistence.store.postgres import PostgresConversationStore
from chatplane.v1 import admin_pb2, admin_pb2_grpc
from tests.cluster.cluster_fixtures import topic_values
from tests.engine_processes import Engines
from tests.integration.stack_client import (
    FAST_PACE,
    Client,
    create_key,
    poll,
    running_stack,
    unique,
)

pytestmark = pytest.mark.engines


def pg_user_rows(dsn: str, tenant: str, user: str) -> int:
    """The user's messages and conversations in PostgreSQL."""
    with psycopg.connect(dsn, connect_timeout=5) as connection:
        row = connection.execute(
            "SELECT (SELECT count(*) FROM messages WHERE tenant_id = %(t)s AND user_id = %(u)s)"
            " + (SELECT count(*) FROM conversations WHERE tenant_id = %(t)s AND user_id = %(u)s)",
            {"t": tenant, "u": user},
        ).fetchone()
    assert row is not None
    return int(row[0])


def pg_canary_rows(dsn: str, marker: str) -> int:
    """Rows of PostgreSQL whose text holds `marker` in the clear."""
    with psycopg.connect(dsn, connect_timeout=5) as connection:
        row = connection.execute(
            "SELECT (SELECT count(*) FROM messages WHERE strpos(text, %(m)s) > 0)"
            " + (SELECT count(*) FROM conversations WHERE strpos(title, %(m)s) > 0)"
            " + (SELECT count(*) FROM feedback WHERE strpos(comment, %(m)s) > 0)",
            {"m": marker},
        ).fetchone()
    assert row is not None
    return int(row[0])


def os_canary_ids(url: str, index: str, tenant: str, user: str, canary: str) -> list[str]:
    """The `_id`s of the user's memory documents OpenSearch finds for the canary."""
    client = opensearchpy.OpenSearch(hosts=[url])
    try:
        client.indices.refresh(index=index)
        response = client.search(
            index=index,
            body={
                "size": 100,
                "query": {
                    "bool": {
                        "filter": [
                            {"term": {"tenant_id": tenant}},
                            {"term": {"user_id": user}},
                        ],
                        "must": [{"match_phrase": {"text": canary}}],
                    }
                },
            },
        )
        return [hit["_id"] for hit in response["hits"]["hits"]]
    finally:
        client.close()


def os_user_items(url: str, index: str, tenant: str, user: str) -> int:
    """How many memory documents of the user OpenSearch holds."""
    client = opensearchpy.OpenSearch(hosts=[url])
    try:
        client.indices.refresh(index=index)
        query = {"bool": {"filter": [{"term": {"tenant_id": tenant}}, {"term": {"user_id": user}}]}}
        return int(client.count(index=index, body={"query": query})["count"])
    finally:
        client.close()


def os_found(url: str, index: str, ids: list[str]) -> int:
    """How many of the `_id`s a GET still finds."""
    client = opensearchpy.OpenSearch(hosts=[url])
    try:
        return sum(bool(client.exists(index=index, id=doc_id)) for doc_id in ids)
    finally:
        client.close()


async def kafka_texts(
    bootstrap: str, dsn: str, data_dir: Path, tenant: str
) -> dict[str, list[str]]:
    """The tenant's chatplane.messages records on Kafka, per user: each text opened with the
    stack's keys (its data dir's development KEK, keys from PostgreSQL), or "KeyDestroyed"."""
    values = await asyncio.to_thread(topic_values, bootstrap, MESSAGES_TOPIC, tenant.encode())
    settings = Settings(data_dir=data_dir)
    store = await PostgresConversationStore.open(dsn, pool_max_size=2)
    keyring = store_keyring(settings, store_key_source(settings, store))
    texts: dict[str, list[str]] = {}
    try:
        for value in values:
            record = events_pb2.MessageRecorded.FromString(value)
            if record.tenant_id != tenant:
                continue
            assert is_sealed(record.message.text)
            try:
                text = await keyring.open(
                    tenant, record.user_id, record.message.text, record.message.message_id
                )
            except KeyDestroyed:
                text = "KeyDestroyed"
            texts.setdefault(record.user_id, []).append(text)
    finally:
        await store.close()
    return texts


@pytest.mark.timeout(300)
async def test_erasure_canary_on_postgres_and_opensearch(
    engines: Engines, postgres_database: str, tmp_path: Path
) -> None:
    index = f"erasure-{uuid.uuid4().hex[:8]}"
    env = {
        **FAST_PACE,
        **engines.env,
        "CHATPLANE_PROFILE": "cluster",
        "CHATPLANE_POSTGRES_DSN": postgres_database,
        "CHATPLANE_OPENSEARCH_INDEX": index,
    }
    url = engines.env["CHATPLANE_OPENSEARCH_URL"]
    tenant, canary = unique("erase"), uuid.uuid4().hex
    async with (
        running_stack(tmp_path / "data", env) as stack,
        stack.channel("gateway") as channel,
    ):
        conversations: dict[str, str] = {}
        for user in ("erased", "kept"):
            client = Client(channel, await create_key(stack, tenant, user))
            first = await client.chat(f"please remember {canary} {user}")
            assert first.started is not None
            conversations[user] = first.started.started.conversation_id
            await client.chat(f"what was {canary} again?", conversations[user])

        async def stored() -> bool:
            return all(
                pg_user_rows(postgres_database, tenant, user) == 5
                # Memory indexes the four messages from the log, shortly after `done`.
                and os_user_items(url, index, tenant, user) >= 4
                and len(os_canary_ids(url, index, tenant, user, canary)) >= 2
                for user in ("erased", "kept")
            )

        await poll(stored, timeout=30, interval=0.3)
        erased_ids = os_canary_ids(url, index, tenant, "erased", canary)
        kept_before = (
            pg_user_rows(postgres_database, tenant, "kept"),
            sorted(os_canary_ids(url, index, tenant, "kept", canary)),
        )

        admin_key = await create_key(stack, tenant, "admin", roles=("admin",))
        receipt = (
            await admin_pb2_grpc.AdminServiceStub(channel).EraseUser(
                admin_pb2.EraseUserRequest(user_id="erased"),
                metadata=(("authorization", f"Bearer {admin_key}"),),
                timeout=120,
            )
        ).receipt

    steps = {step.step: dict(step.removed) for step in receipt.steps}
    assert receipt.HasField("finish_time")
    assert steps["system_of_record"]["messages"] == 4
    assert steps["memory_index"]["turns"] >= 4
    # chatplane's topics are not compacted: nothing to tombstone (crypto-shredding and the
    # topics' retention take care of their records).
    assert steps["message_log"] == {"compacted_topics": 0, "tombstones": 0}
    assert pg_user_rows(postgres_database, tenant, "erased") == 0
    assert pg_canary_rows(postgres_database, f"{canary} erased") == 0
    assert os_canary_ids(url, index, tenant, "erased", canary) == []
    assert os_found(url, index, erased_ids) == 0
    # Kafka keeps the records (its topics are not compacted), but none of the erased user's
    # opens any more; the other user's still do.
    texts = await kafka_texts(
        engines.env["CHATPLANE_KAFKA_BOOTSTRAP"], postgres_database, tmp_path / "data", tenant
    )
    assert texts["erased"] == ["KeyDestroyed"] * 4
    assert len(texts["kept"]) == 4 and all(canary in text for text in texts["kept"])
    assert (
        pg_user_rows(postgres_database, tenant, "kept"),
        sorted(os_canary_ids(url, index, tenant, "kept", canary)),
    ) == kept_before


@pytest.mark.timeout(120)
async def test_kafka_eraser_tombstones_the_conversations_on_compacted_topics(
    engines: Engines,
) -> None:
    bootstrap = engines.env["CHATPLANE_KAFKA_BOOTSTRAP"]
    compacted, plain = f"erasure-compacted-{new_id()}", f"erasure-plain-{new_id()}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    created = admin.create_topics(
        [
            NewTopic(compacted, 1, 1, config={"cleanup.policy": "compact"}),
            NewTopic(plain, 1, 1),
        ]
    )
    for future in created.values():
        future.result(timeout=30)
    conversations = [new_id(), new_id()]

    removed = await KafkaLogEraser(
        bootstrap, [compacted, plain, "no-such-topic"]
    ).erase_conversations(conversations)

    assert removed == {"compacted_topics": 1, "tombstones": 2}
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{new_id()}",
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.subscribe([compacted])
        seen: list[tuple[bytes | None, bytes | None]] = []

        async def tombstones() -> bool:
            seen.extend((m.key(), m.value()) for m in consumer.consume(10, timeout=0.5))
            return len(seen) >= 2

        await poll(tombstones, timeout=30)
    finally:
        consumer.close()
    assert sorted(seen) == sorted((c.encode(), None) for c in conversations)
