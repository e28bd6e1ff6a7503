"""Fixtures of the Persistence unit tests: a controllable clock, a SQLite store in the test's
temporary directory, the embedded message log in a fresh PostgreSQL database, and a builder of
log records (the clock and the builder are shared with the store contract suite,
tests/contract/store_fixtures.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from chatplane.internal.v1 import events_pb2
from chatplane.log import PostgresMessageLog
from chatplane.persistence.store.sqlite import SqliteConversationStore
from tests.contract.store_fixtures import FakeClock, recorded


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "persistence.db"


@pytest.fixture
async def store(store_path: Path, clock: FakeClock) -> AsyncIterator[SqliteConversationStore]:
    opened = await SqliteConversationStore.open(store_path, clock=clock)
    yield opened
    await opened.close()


@pytest.fixture
def log(postgres_database: str) -> PostgresMessageLog:
    return PostgresMessageLog(postgres_database)


@pytest.fixture
def make_recorded() -> Callable[..., events_pb2.MessageRecorded]:
    return recorded
