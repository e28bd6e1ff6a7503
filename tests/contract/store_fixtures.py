"""Fixtures of the ConversationStore contract suite, imported by
tests/contract/test_conversation_store.py (each fixture function is named `<name>_fixture`, so
the tests' arguments do not shadow the imports): a clock the test moves by hand, message and
log-record builders, and the store under test, in a fresh schema
of a database made for the module on the session's PostgreSQL (created and dropped here; the
server itself is shared with the rest of the session and left running)."""

from __future__ import annotations

import abc
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from chatplane.common.ids import new_id
from chatplane.internal.v1 import events_pb2
from chatplane.persistence.store.base import (
    Clock,
    ConversationStore,
    Message,
    MessageStatus,
    Owner,
    Role,
)
from chatplane.persistence.store.migrations import shipped_migrations
from chatplane.persistence.store.postgres import PostgresConversationStore
from chatplane.v1 import resources_pb2
from tests.engine_processes import Engines

ENGINES = ("postgres",)


class FakeClock:
    """A clock the test moves by hand, so that leases expire without sleeping."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class StoreTarget(abc.ABC):
    """One engine's database for one test: opens stores on it and reads its tables directly."""

    engine: str

    @abc.abstractmethod
    async def open(self, clock: Clock) -> ConversationStore:
        """A new store (its own connections) on the test's database."""

    @abc.abstractmethod
    def rows(self, query: str) -> list[tuple[Any, ...]]:
        """The rows of `query` , read around the store."""

    @abc.abstractmethod
    def schema_versions(self) -> list[tuple[int, str]]:
        """The (version, name) of each migration the engine ships, in order."""


class PostgresTarget(StoreTarget):
    """A fresh schema (first on the search_path of `dsn`) in the module's database."""

    engine = "postgres"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def open(self, clock: Clock) -> ConversationStore:
        return await PostgresConversationStore.open(self.dsn, pool_max_size=4, clock=clock)

    def rows(self, query: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as connection:
            return connection.execute(query).fetchall()

    def schema_versions(self) -> list[tuple[int, str]]:
        return [(m.version, m.name) for m in shipped_migrations()]


@pytest.fixture(name="module_database", scope="module")
def module_database_fixture(postgres_server: Engines) -> Iterator[str]:
    """The DSN of a database made for this module, dropped at its end."""
    maintenance = postgres_server.env["CHATPLANE_POSTGRES_DSN"]
    name = f"contract_store_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(maintenance, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(maintenance, dbname=name)
    finally:
        with psycopg.connect(maintenance, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(name="postgres_dsn")
def postgres_dsn_fixture(module_database: str) -> Iterator[str]:
    """The DSN of a fresh, empty schema (first on its search_path) of the module's database,
    dropped after the test."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(module_database, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield make_conninfo(module_database, options=f"-c search_path={schema}")
    finally:
        with psycopg.connect(module_database, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(name="store_target", params=ENGINES)
def store_target_fixture(request: pytest.FixtureRequest) -> StoreTarget:
    """The empty schema of one engine."""
    return PostgresTarget(request.getfixturevalue("postgres_dsn"))


@pytest.fixture(name="clock")
def clock_fixture() -> FakeClock:
    return FakeClock()


@pytest.fixture(name="store")
async def store_fixture(
    store_target: StoreTarget, clock: FakeClock
) -> AsyncIterator[ConversationStore]:
    opened = await store_target.open(clock)
    yield opened
    await opened.close()


MessageFactory = Callable[..., Message]


@pytest.fixture(name="make_message")
def make_message_fixture(clock: FakeClock) -> MessageFactory:
    """Builds a message of `owner` in `conversation_id`, created at the clock's time unless
    `create_time` is given; other fields as keywords."""

    def build(owner: Owner, conversation_id: str, **fields: Any) -> Message:
        values: dict[str, Any] = {
            "message_id": new_id(),
            "role": Role.USER,
            "text": "hello there",
            "status": MessageStatus.COMPLETE,
            "create_time": clock.now,
        }
        values.update(fields)
        return Message(conversation_id=conversation_id, owner=owner, **values)

    return build


def recorded(
    owner: Owner,
    *,
    conversation_id: str | None = None,
    message_id: str | None = None,
    role: resources_pb2.Role.ValueType = resources_pb2.ROLE_USER,
    schema_version: int = 1,
    text: str = "hello there",
) -> events_pb2.MessageRecorded:
    """A MessageRecorded record as the Agent writes it."""
    record = events_pb2.MessageRecorded(
        schema_version=schema_version,
        tenant_id=owner.tenant_id,
        user_id=owner.user_id,
        message=resources_pb2.Message(
            message_id=new_id() if message_id is None else message_id,
            conversation_id=new_id() if conversation_id is None else conversation_id,
            role=role,
            text=text,
            status=resources_pb2.MESSAGE_STATUS_COMPLETE,
        ),
    )
    record.message.create_time.GetCurrentTime()
    return record
