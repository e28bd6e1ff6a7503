"""Export in the cluster profile (docs/privacy.md, "Export"): the session's Kafka, PostgreSQL
and OpenSearch. The archive of one user holds exactly their messages (read from PostgreSQL),
feedback and remembered turns (read from OpenSearch), and nothing of the other user."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio

from tests.engine_processes import Engines
from tests.integration.stack_client import running_stack
from tests.integration.test_privacy import ENV, Seeded, check_alices_archive, seed

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def seeded_cluster(
    engines: Engines, module_postgres_database: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Seeded]:
    env = {
        **ENV,
        **engines.env,
        "CHATPLANE_PROFILE": "cluster",
        "CHATPLANE_POSTGRES_DSN": module_postgres_database,
        "CHATPLANE_OPENSEARCH_INDEX": f"privacy-{uuid.uuid4().hex[:8]}",
    }
    async with (
        running_stack(tmp_path_factory.mktemp("privacy-cluster"), env) as stack,
        grpc.aio.insecure_channel(stack.info().address("gateway")) as channel,
    ):
        yield await seed(stack, channel)


async def test_the_archive_holds_exactly_the_users_data_on_the_engines(
    seeded_cluster: Seeded,
) -> None:
    await check_alices_archive(seeded_cluster)
