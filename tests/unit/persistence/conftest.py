"""Fixtures of the Persistence unit tests: a controllable clock, a SQLite store and an embedded
message log in the test's temporary directory, and builders of messages and log records."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chatplane.common.ids import new_id
from chatplane.log import EmbeddedMessageLog
from chatplane.persistence.store.base import Message, MessageStatus, Owner, Role
from chatplane.persistence.store.sqlite import SqliteConversationStore
from chatplane.v1 import events_pb2, resources_pb2


class FakeClock:
    """A clock the test moves by hand, so that leases expire without sleeping."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


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
def log(tmp_path: Path) -> EmbeddedMessageLog:
    return EmbeddedMessageLog(tmp_path / "log.db")


MessageFactory = Callable[..., Message]


@pytest.fixture
def make_message(clock: FakeClock) -> MessageFactory:
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


@pytest.fixture
def make_recorded() -> Callable[..., events_pb2.MessageRecorded]:
    return recorded
