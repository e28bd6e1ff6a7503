"""Erasure on the embedded profile, end to end (docs/privacy.md): a user whose messages carry a
unique canary is erased through AdminService; afterwards no row, memory item or log record of
the embedded stores holds the canary for them, while another user of the tenant keeps
everything. A second call returns a receipt (nothing left to remove); a job cut short by a
crash of Persistence is finished by the restarted process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import psycopg
import pytest

from chatplane.common.settings import Settings
from chatplane.common.topics import MESSAGES_TOPIC
from chatplane.crypto.envelope import KeyDestroyed, is_sealed
from chatplane.crypto.factory import store_key_source, store_keyring
from chatplane.internal.v1 import audit_pb2, events_pb2, memory_pb2, memory_pb2_grpc
from chatplane.launcher import Stack
from chatplane.log.postgres import SCHEMA as LOG_SCHEMA
from chatplane.persistence.client import PersistenceClient
from chatplane.persistence.erasure_job import DATA_KEY, SYSTEM_OF_RECORD
from chatplane.persistence.store.postgres import PostgresConversationStore
from chatplane.v1 import admin_pb2, admin_pb2_grpc
from tests.integration.erasure_faults import kill_after_erasure_step
from tests.integration.stack_client import (
    FAST_PACE,
    Client,
    create_key,
    poll,
    running_stack,
    store_dsn,
    unique,
)

pytestmark = pytest.mark.integration


def _store_count(data_dir: Path, query: str, *args: object) -> int:
    with psycopg.connect(store_dsn(data_dir)) as connection:
        row = connection.execute(query, args).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return int(row[0])


def user_rows(data_dir: Path, tenant: str, user: str) -> int:
    """The user's messages and conversations in the system of record."""
    return sum(
        _store_count(
            data_dir,
            f"SELECT count(*) FROM {table} WHERE tenant_id = %s AND user_id = %s",
            tenant,
            user,
        )
        for table in ("messages", "conversations")
    )


def canary_rows(data_dir: Path, marker: str) -> int:
    """Rows of the system of record whose text holds `marker` in the clear."""
    return sum(
        _store_count(
            data_dir, f"SELECT count(*) FROM {table} WHERE strpos({column}, %s) > 0", marker
        )
        for table, column in (
            ("messages", "text"),
            ("conversations", "title"),
            ("feedback", "comment"),
            ("handoffs", "reason"),
        )
    )


def memory_turns(data_dir: Path, tenant: str, user: str) -> int:
    """The user's turn items in the embedded memory index."""
    return _store_count(
        data_dir,
        "SELECT count(*) FROM memory.items WHERE tenant_id = %s AND user_id = %s AND kind = 'turn'",
        tenant,
        user,
    )


def canary_memory(data_dir: Path, tenant: str, user: str, canary: str) -> int:
    """The user's items in the embedded memory index holding the canary."""
    return _store_count(
        data_dir,
        "SELECT count(*) FROM memory.items"
        " WHERE tenant_id = %s AND user_id = %s AND strpos(text, %s) > 0",
        tenant,
        user,
        canary,
    )


def _log_count(dsn: str, query: str, *args: object) -> int:
    """A count over the embedded message log's tables (0 before the log's first use)."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        if connection.execute(f"SELECT to_regclass('{LOG_SCHEMA}.records')").fetchone() == (None,):
            return 0
        row = connection.execute(query, args).fetchone()
        assert row is not None
        return int(row[0])


def canary_log(dsn: str, marker: str) -> int:
    """Records of the embedded message log holding `marker` in the clear."""
    return _log_count(
        dsn,
        f"SELECT count(*) FROM {LOG_SCHEMA}.records WHERE position(%s::bytea IN value) > 0",
        marker.encode(),
    )


def log_records(dsn: str, conversation_ids: list[str]) -> int:
    """Records of the embedded message log (any topic) keyed by these conversations."""
    return _log_count(
        dsn,
        f"SELECT count(*) FROM {LOG_SCHEMA}.records WHERE key = ANY(%s::bytea[])",
        [conversation_id.encode() for conversation_id in conversation_ids],
    )


def logged_messages(dsn: str, conversation_id: str) -> list[events_pb2.MessageRecorded]:
    """The MessageRecorded records of a conversation in the embedded log, in log order."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        rows = connection.execute(
            f"SELECT value FROM {LOG_SCHEMA}.records WHERE topic = %s AND key = %s"
            " ORDER BY log_offset",
            (MESSAGES_TOPIC, conversation_id.encode()),
        ).fetchall()
    return [events_pb2.MessageRecorded.FromString(value) for (value,) in rows]


async def opened_texts(data_dir: Path, records: list[events_pb2.MessageRecorded]) -> list[str]:
    """Each record's text opened with the stack's keys, or "KeyDestroyed" when its owner's
    data key is gone (the data dir's development KEK, keys from its system of record)."""
    settings = Settings(data_dir=data_dir)
    store = await PostgresConversationStore.open(store_dsn(data_dir), pool_max_size=2)
    keyring = store_keyring(settings, store_key_source(settings, store))
    texts = []
    try:
        for record in records:
            assert is_sealed(record.message.text)
            try:
                texts.append(
                    await keyring.open(
                        record.tenant_id,
                        record.user_id,
                        record.message.text,
                        record.message.message_id,
                    )
                )
            except KeyDestroyed:
                texts.append("KeyDestroyed")
    finally:
        await store.close()
    return texts


async def recalled(stack: Stack, tenant: str, user: str, canary: str) -> int:
    """Items MemoryService recalls for the user when asked for the canary."""
    async with stack.channel("memory") as channel:
        response = await memory_pb2_grpc.MemoryServiceStub(channel).Recall(
            memory_pb2.RecallRequest(
                tenant_id=tenant, user_id=user, conversation_id="", query=canary, top_k=10
            ),
            timeout=10,
        )
    return sum(canary in item.text for item in response.items)


async def erase_audits(stack: Stack, tenant: str, user: str) -> int:
    async with stack.channel("persistence") as channel:
        response = await PersistenceClient(channel).audit.ListAuditRecords(
            audit_pb2.ListAuditRecordsRequest(page_size=1000), timeout=10
        )
    return sum(
        r.event.action == "user.erase" and r.event.object == f"user/{tenant}/{user}"
        for r in response.records
    )


async def seed(stack: Stack, tenant: str, user: str, canary: str) -> str:
    """Two turns of the user carrying the canary; returns once all four messages are stored
    and indexed (Memory indexes them from the message log, shortly after `done`)."""
    key = await create_key(stack, tenant, user)
    async with stack.channel("gateway") as channel:
        client = Client(channel, key)
        first = await client.chat(f"please remember {canary}-{user}")
        assert first.started is not None
        conversation = first.started.started.conversation_id
        await client.chat(f"what was {canary}-{user} again?", conversation)

    async def stored() -> bool:
        return (
            user_rows(stack.data_dir, tenant, user) >= 5  # 4 messages, 1 conversation
            and memory_turns(stack.data_dir, tenant, user) >= 4
        )

    await poll(stored, timeout=30)
    return conversation


@pytest.mark.timeout(120)
async def test_erasure_canary_across_the_embedded_stores(tmp_path: Path) -> None:
    tenant, canary = unique("erase"), unique("canary")
    async with running_stack(tmp_path / "data", FAST_PACE) as stack:
        data = stack.data_dir
        # The message log's tables live in the stack's own PostgreSQL, beside the store's.
        log_dsn = store_dsn(data)
        erased_conversation = await seed(stack, tenant, "erased", canary)
        kept_conversation = await seed(stack, tenant, "kept", canary)
        kept_before = (
            user_rows(data, tenant, "kept"),
            canary_memory(data, tenant, "kept", canary),
            log_records(log_dsn, [kept_conversation]),
        )
        assert all(kept_before)
        assert canary_memory(data, tenant, "erased", canary) >= 2
        assert log_records(log_dsn, [erased_conversation]) >= 4
        admin_key = await create_key(stack, tenant, "admin", roles=("admin",))
        chat_key = await create_key(stack, tenant, "someone")

        async with stack.channel("gateway") as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await admin.EraseUser(
                    admin_pb2.EraseUserRequest(user_id="erased"),
                    metadata=(("authorization", f"Bearer {chat_key}"),),
                    timeout=10,
                )
            assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
            as_admin = (("authorization", f"Bearer {admin_key}"),)
            with pytest.raises(grpc.aio.AioRpcError) as invalid:
                await admin.EraseUser(admin_pb2.EraseUserRequest(), metadata=as_admin, timeout=10)
            assert invalid.value.code() is grpc.StatusCode.INVALID_ARGUMENT

            # Retention through AdminService: the caller's tenant only, admins only.
            shown = await admin.GetRetention(
                admin_pb2.GetRetentionRequest(), metadata=as_admin, timeout=10
            )
            assert (shown.policy.tenant_id, shown.policy.days) == (tenant, 0)
            policy = (
                await admin.SetRetention(
                    admin_pb2.SetRetentionRequest(days=90), metadata=as_admin, timeout=10
                )
            ).policy
            assert (policy.tenant_id, policy.days) == (tenant, 90)
            assert policy.HasField("update_time")
            for request, metadata, code in (
                (admin_pb2.SetRetentionRequest(days=-1), as_admin, "INVALID_ARGUMENT"),
                (
                    admin_pb2.SetRetentionRequest(days=1),
                    (("authorization", f"Bearer {chat_key}"),),
                    "PERMISSION_DENIED",
                ),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await admin.SetRetention(request, metadata=metadata, timeout=10)
                assert refused.value.code().name == code
            await admin.SetRetention(
                admin_pb2.SetRetentionRequest(days=0), metadata=as_admin, timeout=10
            )

            receipt = (
                await admin.EraseUser(
                    admin_pb2.EraseUserRequest(user_id="erased"), metadata=as_admin, timeout=60
                )
            ).receipt
            again = (
                await admin.EraseUser(
                    admin_pb2.EraseUserRequest(user_id="erased"), metadata=as_admin, timeout=60
                )
            ).receipt

        steps = {step.step: dict(step.removed) for step in receipt.steps}
        assert list(steps) == ["data_key", "system_of_record", "memory_index", "message_log"]
        assert steps["data_key"] == {"data_keys": 1}
        assert (receipt.tenant_id, receipt.user_id) == (tenant, "erased")
        assert receipt.HasField("finish_time")
        assert all(step.HasField("finish_time") for step in receipt.steps)
        took = receipt.finish_time.ToMilliseconds() - receipt.create_time.ToMilliseconds()
        assert 0 <= took < 10_000
        assert steps["system_of_record"]["messages"] == 4
        assert steps["system_of_record"]["conversations"] == 1
        assert steps["system_of_record"]["api_keys"] == 1
        assert steps["memory_index"]["turns"] >= 4
        assert steps["message_log"]["log_records"] >= 4

        # Nothing of the erased user is left in any embedded store, nor recalled.
        assert user_rows(data, tenant, "erased") == 0
        assert canary_rows(data, f"{canary}-erased") == 0
        assert canary_memory(data, tenant, "erased", canary) == 0
        assert log_records(log_dsn, [erased_conversation]) == 0
        assert canary_log(log_dsn, f"{canary}-erased") == 0
        assert await recalled(stack, tenant, "erased", canary) == 0
        # The other user of the tenant keeps everything.
        assert (
            user_rows(data, tenant, "kept"),
            canary_memory(data, tenant, "kept", canary),
            log_records(log_dsn, [kept_conversation]),
        ) == kept_before
        assert await recalled(stack, tenant, "kept", canary) >= 1

        # Idempotent: the second call is a new, empty erasure with its own receipt.
        assert again.job_id != receipt.job_id and again.HasField("finish_time")
        assert all(set(step.removed.values()) <= {0} for step in again.steps)
        assert dict(again.steps[0].removed) == {"data_keys": 0}
        # One audit record per erasure, without content.
        assert await erase_audits(stack, tenant, "erased") == 2


@pytest.mark.timeout(120)
async def test_erasure_cut_short_by_a_crash_is_finished_after_the_restart(tmp_path: Path) -> None:
    tenant, canary = unique("erase"), unique("canary")
    async with running_stack(tmp_path / "data", FAST_PACE) as stack:
        data = stack.data_dir
        # The message log's tables live in the stack's own PostgreSQL, beside the store's.
        log_dsn = store_dsn(data)
        conversation = await seed(stack, tenant, "erased", canary)
        records = logged_messages(log_dsn, conversation)
        assert len(records) == 4
        # Sealed on the log, and they open while the user's data key exists.
        assert all(canary in text for text in await opened_texts(data, records))
        admin_key = await create_key(stack, tenant, "admin", roles=("admin",))
        # MemoryService down holds the job after step 2 (the rows); Persistence is killed
        # once that step's end is stored, as a crash between two steps would.
        await stack.services["memory"].stop(timeout=30)
        async with stack.channel("gateway") as channel:
            call = asyncio.ensure_future(
                admin_pb2_grpc.AdminServiceStub(channel).EraseUser(
                    admin_pb2.EraseUserRequest(user_id="erased"),
                    metadata=(("authorization", f"Bearer {admin_key}"),),
                    timeout=60,
                )
            )
            cut_at = await kill_after_erasure_step(
                stack.services["persistence"],
                Settings(data_dir=data, postgres_dsn=log_dsn),
                tenant_id=tenant,
                user_id="erased",
                step=SYSTEM_OF_RECORD,
            )
            with pytest.raises(grpc.aio.AioRpcError) as cut:
                await call
        assert cut.value.code() is grpc.StatusCode.UNAVAILABLE
        assert [step.name for step in cut_at.steps if step.done] == [DATA_KEY, SYSTEM_OF_RECORD]
        # Half done: the rows are gone, the memory and the log are not yet.
        assert user_rows(data, tenant, "erased") == 0
        assert canary_memory(data, tenant, "erased", canary) >= 2
        assert log_records(log_dsn, [conversation]) >= 4
        # The data key went first: every log record of the user fails to decrypt already.
        assert await opened_texts(data, logged_messages(log_dsn, conversation)) == [
            "KeyDestroyed"
        ] * len(records)

        await stack.start_service("memory")
        await stack.start_service("persistence")

        async def audited() -> bool:
            return await erase_audits(stack, tenant, "erased") == 1

        await poll(audited, timeout=30)
        assert canary_memory(data, tenant, "erased", canary) == 0
        assert log_records(log_dsn, [conversation]) == 0
