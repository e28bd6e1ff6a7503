"""Fixtures of the Persistence unit tests: a controllable clock, the store on a fresh PostgreSQL
database (tests/conftest.py's `postgres_database`), an embedded message log in the test's
temporary directory, and a builder of log records (the clock and the builder are shared with
the store contract suite, tests/contract/store_fixtures.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from chatplane.log import EmbeddedMessageLog
from chatplane.persistence.store.postgres import PostgresConversationStore
from chatplane.v1 import events_pb2
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
def log(tmp_path: Path) -> EmbeddedMessageLog:
    return EmbeddedMessageLog(tmp_path / "log.db")


@pytest.fixture
def make_recorded() -> Callable[..., events_pb2.MessageRecorded]:
    return recorded
