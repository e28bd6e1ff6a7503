"""Fixtures of the Persistence unit tests: a controllable clock, the store and the embedded
message log on one fresh PostgreSQL database (tests/conftest.py's `postgres_database`), and a
builder of log records (the clock and the builder are shared with the store contract suite,
tests/contract/store_fixtures.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from chatplane.internal.v1 import events_pb2
from chatplane.log import PostgresMessageLog
from chatplane.persistence.store.postgres import PostgresConversationStore
from tests.contract.store_fixtures import FakeClock, recorded


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(
    postgres_database: str, clock: FakeClock
) -> AsyncIterator[PostgresConversationStore]:
    opened = await PostgresConversationStore.open(postgres_database, pool_max_size=4, clock=clock)
    yield opened
    await opened.close()


@pytest.fixture
def log(postgres_database: str) -> PostgresMessageLog:
    return PostgresMessageLog(postgres_database)


@pytest.fixture
def make_recorded() -> Callable[..., events_pb2.MessageRecorded]:
    return recorded
