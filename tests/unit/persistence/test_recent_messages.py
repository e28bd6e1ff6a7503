"""TurnService.GetRecentMessages over gRPC on a real store (PostgreSQL): bad arguments are
INVALID_ARGUMENT naming the field, another owner's conversation is NOT_FOUND, a turn that
failed is never waited for, a turn that is never stored costs at most the wait (or the
caller's deadline), and a turn stored while the read waits is returned as soon as its batch
is stored."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import grpc
import pytest
from google.rpc import error_details_pb2

from chatplane.common.ids import new_id
from chatplane.common.interceptors import ServiceInterceptor
from chatplane.internal.v1 import turn_pb2, turn_pb2_grpc
from chatplane.persistence.consumer import BatchStored
from chatplane.persistence.quota_servicer import QuotaServicer
from chatplane.persistence.store.base import (
    Message,
    MessageStatus,
    Owner,
    Role,
    TurnRequest,
    TurnReservation,
)
from chatplane.persistence.store.postgres import PostgresConversationStore
from chatplane.persistence.turn_servicer import TurnServicer
from chatplane.v1 import admin_resources_pb2
from tests.contract.store_fixtures import FakeClock
from tests.integration.stack_client import status_details

ALICE = Owner("tenant-a", "alice")
LEASE = timedelta(minutes=5)
# Long enough that an answer "at once" cannot be mistaken for one after the wait.
LONG_WAIT_MS = 10_000


@dataclass
class Turns:
    """A TurnService on port 0 over the test's store, and what wakes its waiting reads."""

    stub: turn_pb2_grpc.TurnServiceStub
    store: PostgresConversationStore
    stored: BatchStored
    clock: FakeClock

    async def begin(self, owner: Owner = ALICE, conversation_id: str = "") -> TurnReservation:
        return await self.store.begin_turn(
            TurnRequest(
                owner=owner,
                conversation_id=conversation_id,
                client_message_id="",
                user_message_id=new_id(),
                assistant_message_id=new_id(),
                title="t",
                lease=LEASE,
            )
        )

    async def store_turn(self, turn: TurnReservation, parent: str = "") -> None:
        """Stores the turn's question and answer, as the consumer does, and wakes waiters."""
        await self.store.write_messages(
            [
                Message(
                    message_id=turn.user_message_id,
                    role=Role.USER,
                    text="question",
                    status=MessageStatus.COMPLETE,
                    create_time=self.clock.now,
                    parent_message_id=parent,
                    conversation_id=turn.conversation_id,
                    owner=ALICE,
                ),
                Message(
                    message_id=turn.assistant_message_id,
                    role=Role.ASSISTANT,
                    text="answer",
                    status=MessageStatus.COMPLETE,
                    create_time=self.clock.now + timedelta(seconds=1),
                    reply_to_message_id=turn.user_message_id,
                    parent_message_id=turn.user_message_id,
                    conversation_id=turn.conversation_id,
                    owner=ALICE,
                ),
            ]
        )
        self.stored.notify()

    async def recent(
        self,
        conversation_id: str,
        leaf_message_id: str,
        *,
        owner: Owner = ALICE,
        limit: int = 10,
        wait_ms: int = LONG_WAIT_MS,
        timeout: float = 30,
    ) -> turn_pb2.GetRecentMessagesResponse:
        return await self.stub.GetRecentMessages(
            turn_pb2.GetRecentMessagesRequest(
                owner=admin_resources_pb2.Owner(tenant_id=owner.tenant_id, user_id=owner.user_id),
                conversation_id=conversation_id,
                leaf_message_id=leaf_message_id,
                limit=limit,
                wait_ms=wait_ms,
            ),
            timeout=timeout,
        )


@pytest.fixture
async def turns(store: PostgresConversationStore, clock: FakeClock) -> AsyncIterator[Turns]:
    stored = BatchStored()
    server = grpc.aio.server(interceptors=[ServiceInterceptor()])
    turn_pb2_grpc.add_TurnServiceServicer_to_server(
        TurnServicer(store, QuotaServicer(store), stored), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Turns(turn_pb2_grpc.TurnServiceStub(channel), store, stored, clock)
    finally:
        await server.stop(None)


async def timed(
    call: Callable[[], Awaitable[turn_pb2.GetRecentMessagesResponse]],
) -> tuple[turn_pb2.GetRecentMessagesResponse, float]:
    started = time.monotonic()
    response = await call()
    return response, time.monotonic() - started


def ids(response: turn_pb2.GetRecentMessagesResponse) -> list[str]:
    return [message.message_id for message in response.messages]


VALID = {"conversation_id": new_id(), "leaf_message_id": new_id(), "limit": 10, "wait_ms": 0}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"owner": admin_resources_pb2.Owner(user_id="alice")}, "owner.tenant_id"),
        ({"owner": admin_resources_pb2.Owner(tenant_id="tenant-a")}, "owner.user_id"),
        ({"conversation_id": ""}, "conversation_id"),
        ({"conversation_id": "not-a-uuid"}, "conversation_id"),
        ({"leaf_message_id": ""}, "leaf_message_id"),
        ({"leaf_message_id": "x" * 40}, "leaf_message_id"),
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"wait_ms": -1}, "wait_ms"),
        ({"wait_ms": 60_001}, "wait_ms"),
    ],
)
async def test_bad_arguments_are_invalid_argument_naming_the_field(
    turns: Turns, change: dict[str, object], field: str
) -> None:
    fields: dict[str, object] = {
        "owner": admin_resources_pb2.Owner(tenant_id="tenant-a", user_id="alice"),
        **VALID,
        **change,
    }
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await turns.stub.GetRecentMessages(
            turn_pb2.GetRecentMessagesRequest(**fields),  # type: ignore[arg-type]
            timeout=10,
        )
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    (bad_request,) = [
        d for d in status_details(raised.value) if isinstance(d, error_details_pb2.BadRequest)
    ]
    assert [v.field for v in bad_request.field_violations] == [field]


@pytest.mark.parametrize(
    "stranger",
    [Owner("tenant-a", "bob"), Owner("tenant-b", "alice")],
    ids=["same tenant, other user", "other tenant, same user id"],
)
async def test_another_owners_conversation_is_not_found(turns: Turns, stranger: Owner) -> None:
    turn = await turns.begin()
    await turns.store_turn(turn)
    assert ids(await turns.recent(turn.conversation_id, turn.assistant_message_id)) == [
        turn.user_message_id,
        turn.assistant_message_id,
    ]
    for conversation_id in (turn.conversation_id, new_id()):  # theirs, and one of no one
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await turns.recent(conversation_id, turn.assistant_message_id, owner=stranger)
        assert raised.value.code() is grpc.StatusCode.NOT_FOUND
        assert "question" not in (raised.value.details() or "")


async def test_stored_turns_answer_at_once_newest_limit_oldest_first(turns: Turns) -> None:
    first = await turns.begin()
    await turns.store_turn(first)
    second = await turns.begin(conversation_id=first.conversation_id)
    await turns.store_turn(second, parent=first.assistant_message_id)

    everything, took = await timed(
        lambda: turns.recent(first.conversation_id, second.assistant_message_id)
    )
    assert ids(everything) == [
        first.user_message_id,
        first.assistant_message_id,
        second.user_message_id,
        second.assistant_message_id,
    ]
    assert not everything.incomplete
    assert took < 2
    newest = await turns.recent(first.conversation_id, second.assistant_message_id, limit=3)
    assert ids(newest) == ids(everything)[1:]
    # A leaf higher up the branch ends the window there.
    upper = await turns.recent(first.conversation_id, first.assistant_message_id)
    assert ids(upper) == ids(everything)[:2]


async def test_a_turn_never_stored_costs_at_most_the_wait(turns: Turns) -> None:
    first = await turns.begin()
    await turns.store_turn(first)
    running = await turns.begin(conversation_id=first.conversation_id)  # live, never stored

    response, took = await timed(
        lambda: turns.recent(first.conversation_id, running.assistant_message_id, wait_ms=400)
    )
    assert 0.4 <= took < 2.5
    assert response.incomplete
    assert ids(response) == [first.user_message_id, first.assistant_message_id]

    # Without a wait it answers at once with the same.
    at_once, took = await timed(
        lambda: turns.recent(first.conversation_id, running.assistant_message_id, wait_ms=0)
    )
    assert took < 2 and at_once.incomplete and ids(at_once) == ids(response)


async def test_the_callers_deadline_caps_the_wait(turns: Turns) -> None:
    running = await turns.begin()
    response, took = await timed(
        lambda: turns.recent(
            running.conversation_id, running.assistant_message_id, wait_ms=60_000, timeout=2
        )
    )
    # An answer (with what is stored: nothing), not DEADLINE_EXCEEDED.
    assert response.incomplete and ids(response) == []
    assert took < 2


async def test_a_released_turn_is_not_waited_for(turns: Turns) -> None:
    first = await turns.begin()
    await turns.store_turn(first)
    failed = await turns.begin(conversation_id=first.conversation_id)
    assert await turns.store.release_turn(
        ALICE, failed.user_message_id, assistant_message_id=failed.assistant_message_id
    )

    response, took = await timed(
        lambda: turns.recent(first.conversation_id, failed.assistant_message_id)
    )
    assert took < 2
    assert not response.incomplete
    assert ids(response) == [first.user_message_id, first.assistant_message_id]


async def test_a_turn_whose_lease_expired_is_not_waited_for(turns: Turns) -> None:
    abandoned = await turns.begin()
    turns.clock.advance(seconds=LEASE.total_seconds() + 1)

    response, took = await timed(
        lambda: turns.recent(abandoned.conversation_id, abandoned.assistant_message_id)
    )
    assert took < 2
    assert not response.incomplete and ids(response) == []


async def test_a_turn_stored_while_waiting_is_returned_when_its_batch_is_stored(
    turns: Turns,
) -> None:
    turn = await turns.begin()
    waiting = asyncio.create_task(
        timed(lambda: turns.recent(turn.conversation_id, turn.assistant_message_id))
    )
    await asyncio.sleep(0.3)  # the read is waiting: nothing of the turn is stored yet
    assert not waiting.done()
    await turns.store_turn(turn)

    response, took = await asyncio.wait_for(waiting, 5)
    assert not response.incomplete
    assert ids(response) == [turn.user_message_id, turn.assistant_message_id]
    assert took < 2
