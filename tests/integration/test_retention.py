"""Retention on the embedded profile (docs/privacy.md): periods set with `chatplane retention`,
then one sweep on a clock 31 days ahead, over the running stack's own stores (the rows, the
memory index through MemoryService, the message log's table): a tenant with a 30-day period
loses its conversations everywhere, a tenant with 60 days and one without a period keep
theirs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chatplane.internal.v1 import memory_pb2_grpc
from chatplane.log.record_erasure import PostgresLogEraser
from chatplane.persistence.memory_eraser import MemoryServiceEraser
from chatplane.persistence.retention import RetentionSweeper
from chatplane.persistence.store.postgres import PostgresConversationStore
from tests.integration.stack_client import FAST_PACE, running_stack, store_dsn, unique
from tests.integration.test_cli import cli
from tests.integration.test_erasure import canary_memory, log_records, seed, user_rows

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
async def test_retention_sweep_deletes_expired_conversations_from_every_store(
    tmp_path: Path,
) -> None:
    canary = unique("canary")
    short, long, forever = unique("short"), unique("long"), unique("forever")
    async with running_stack(tmp_path / "data", FAST_PACE) as stack:
        data = stack.data_dir
        # The message log's tables live in the stack's own PostgreSQL, beside the store's.
        log_dsn = store_dsn(data)
        conversations = {
            tenant: await seed(stack, tenant, "user", canary) for tenant in (short, long, forever)
        }
        set_short = cli(data, "retention", "set", "--tenant", short, "--days", "30")
        assert set_short.returncode == 0, set_short.stderr
        assert "retention days:  30" in set_short.stdout
        assert cli(data, "retention", "set", "--tenant", long, "--days", "60").returncode == 0
        shown = cli(data, "retention", "show", "--tenant", forever)
        assert "none (kept forever)" in shown.stdout
        assert cli(data, "retention", "set", "--tenant", long, "--days", "-1").returncode != 0

        logged = {tenant: log_records(log_dsn, [c]) for tenant, c in conversations.items()}
        later = datetime.now(UTC) + timedelta(days=31)
        store = await PostgresConversationStore.open(store_dsn(data), pool_max_size=2)
        try:
            async with stack.channel("memory") as channel:
                sweeper = RetentionSweeper(
                    store.retention,
                    MemoryServiceEraser(memory_pb2_grpc.MemoryServiceStub(channel), 10.0),
                    PostgresLogEraser(log_dsn),
                    interval=3600,
                    clock=lambda: later,
                )
                counts = await sweeper.sweep()
                assert await sweeper.sweep() == type(counts)()
        finally:
            await store.close()

        assert (counts.conversations, counts.memory_turns) == (1, 4)
        assert counts.log_records >= 4
        assert counts.log_records == logged[short]
        assert user_rows(data, short, "user") == 0
        assert canary_memory(data, short, "user", canary) == 0
        assert log_records(log_dsn, [conversations[short]]) == 0
        for tenant in (long, forever):
            assert user_rows(data, tenant, "user") == 5
            assert canary_memory(data, tenant, "user", canary) >= 2
            assert log_records(log_dsn, [conversations[tenant]]) == logged[tenant]

        # `chatplane erase` prints the receipt as JSON.
        erased = cli(data, "erase", "--tenant", long, "--user", "user")
        assert erased.returncode == 0, erased.stderr
        receipt = json.loads(erased.stdout)
        assert (receipt["tenant_id"], receipt["user_id"]) == (long, "user")
        assert receipt["finish_time"] and receipt["steps"][1]["removed"]["messages"] == 4
        assert user_rows(data, long, "user") == 0
