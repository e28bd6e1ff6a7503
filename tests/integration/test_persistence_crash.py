"""The Persistence service as a real process: killed with SIGKILL in the middle of consuming
5,000 messages and restarted, it ends with every message stored exactly once and no lag; it
answers its RPCs over gRPC and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from chatplane.common.ids import new_id
from chatplane.common.topics import MESSAGES_TOPIC
from chatplane.internal.v1 import conversation_pb2, events_pb2, identity_pb2, turn_pb2
from chatplane.log import LogRecord, PostgresMessageLog
from chatplane.persistence.client import PersistenceClient
from chatplane.persistence.consumer import CONSUMER_GROUP
from chatplane.v1 import admin_resources_pb2, gateway_pb2, resources_pb2

pytestmark = pytest.mark.integration

TOTAL = 5_000
# Appended before the first start; the rest after the crash, so the kill always lands before
# all TOTAL are stored. It comes once KILL_AFTER are stored: the consumer is in full flight.
BEFORE_CRASH = 4_000
KILL_AFTER = 1_000
GRACE_SECONDS = 5.0
ALICE = admin_resources_pb2.Owner(tenant_id="tenant-a", user_id="alice")
BOB = admin_resources_pb2.Owner(tenant_id="tenant-a", user_id="bob")
ALICE_ELSEWHERE = admin_resources_pb2.Owner(tenant_id="tenant-b", user_id="alice")


@dataclass
class Service:
    """A running `python -m chatplane.persistence` and the port it bound."""

    process: asyncio.subprocess.Process
    port: int


async def eventually(
    check: Callable[[], Awaitable[bool]], *, within: float, what: str, interval: float = 0.02
) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(interval)


@pytest.fixture
async def services(
    tmp_path: Path, postgres_database: str
) -> AsyncIterator[Callable[[], Awaitable[Service]]]:
    """Starts the service on tmp_path (data), its store and the message log in
    `postgres_database`, as often as asked; kills leftovers at the end."""
    started: list[asyncio.subprocess.Process] = []
    stderr_path = tmp_path / "persistence.stderr"

    async def start() -> Service:
        env = {
            **os.environ,
            "CHATPLANE_DRAIN_GRACE_SECONDS": str(GRACE_SECONDS),
            "CHATPLANE_BATCH_MAX_RECORDS": "200",
            "CHATPLANE_LOG_LEVEL": "INFO",
            "CHATPLANE_POSTGRES_DSN": postgres_database,
        }
        with stderr_path.open("ab") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "chatplane.persistence",
                "--persistence-port",
                "0",
                "--data-dir",
                str(tmp_path / "data"),
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env=env,
            )
        started.append(process)
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        if not line:
            await process.wait()
            raise AssertionError(f"no ready line; stderr:\n{stderr_path.read_text()[-4000:]}")
        ready = json.loads(line)
        assert ready["event"] == "ready" and ready["service"] == "persistence"
        return Service(process, int(ready["port"]))

    yield start
    for process in started:
        if process.returncode is None:
            process.kill()
        await process.wait()
        if process.stdout is not None:
            await process.stdout.read()


def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def stored_counts(database: str) -> tuple[int, int, int]:
    """Rows, distinct message ids, and the conversations' message_count total."""
    with psycopg.connect(database) as connection:
        try:
            counts = connection.execute(
                "SELECT (SELECT count(*) FROM messages),"
                " (SELECT count(DISTINCT message_id) FROM messages),"
                " (SELECT coalesce(sum(message_count), 0) FROM conversations)"
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            # Not migrated yet.
            return 0, 0, 0
    assert counts is not None
    return int(counts[0]), int(counts[1]), int(counts[2])


async def consumer_lag(log: PostgresMessageLog) -> int:
    async with log.consumer(CONSUMER_GROUP, [MESSAGES_TOPIC]) as observer:
        return await observer.lag()


def recorded_message(
    owner: admin_resources_pb2.Owner,
    conversation_id: str,
    message_id: str,
    *,
    role: resources_pb2.Role.ValueType = resources_pb2.ROLE_USER,
    reply_to: str = "",
) -> LogRecord:
    record = events_pb2.MessageRecorded(
        schema_version=1,
        tenant_id=owner.tenant_id,
        user_id=owner.user_id,
        message=resources_pb2.Message(
            message_id=message_id,
            conversation_id=conversation_id,
            role=role,
            text=f"message {message_id[:8]}",
            status=resources_pb2.MESSAGE_STATUS_COMPLETE,
            reply_to_message_id=reply_to,
        ),
    )
    record.message.create_time.GetCurrentTime()
    return LogRecord(MESSAGES_TOPIC, conversation_id.encode(), record.SerializeToString())


async def append_all(log: PostgresMessageLog, records: list[LogRecord]) -> None:
    async with log.producer() as producer:
        for start in range(0, len(records), 250):
            await producer.append(records[start : start + 250], timeout=30)


@contextlib.asynccontextmanager
async def client(service: Service) -> AsyncIterator[PersistenceClient]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        yield PersistenceClient(channel)


async def terminate(service: Service) -> float:
    """SIGTERM; returns how long the process took to exit (it must exit 0)."""
    started = time.monotonic()
    service.process.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(service.process.wait(), GRACE_SECONDS + 5)
    assert code == 0
    return time.monotonic() - started


async def test_kill_9_mid_batch_loses_and_duplicates_nothing(
    tmp_path: Path, postgres_database: str, services: Callable[[], Awaitable[Service]]
) -> None:
    owners = [ALICE, BOB, ALICE_ELSEWHERE]
    conversations = [(new_id(), owners[i % len(owners)]) for i in range(100)]
    records = [
        recorded_message(owner, conversation_id, new_id())
        for i in range(TOTAL)
        for conversation_id, owner in [conversations[i % len(conversations)]]
    ]
    log = PostgresMessageLog(postgres_database)
    database = postgres_database

    await append_all(log, records[:BEFORE_CRASH])
    first = await services()

    async def some_stored() -> bool:
        return stored_counts(database)[0] >= KILL_AFTER

    await eventually(some_stored, within=60, what=f"{KILL_AFTER} stored", interval=0.002)
    first.process.kill()
    assert await first.process.wait() == -signal.SIGKILL
    at_kill = stored_counts(database)
    assert 0 < at_kill[0] < TOTAL
    assert at_kill[0] == at_kill[1] == at_kill[2]

    await append_all(log, records[BEFORE_CRASH:])
    second = await services()

    async def all_stored() -> bool:
        return stored_counts(database)[0] >= TOTAL and await consumer_lag(log) == 0

    await eventually(all_stored, within=120, what=f"{TOTAL} stored and lag 0")
    assert stored_counts(database) == (TOTAL, TOTAL, TOTAL)
    assert await consumer_lag(log) == 0

    # It serves: a turn begun over gRPC completes once its messages come through the log.
    async with client(second) as stub:
        begin = turn_pb2.BeginTurnRequest(
            owner=ALICE,
            client_message_id="retry-me",
            user_message_id=new_id(),
            assistant_message_id=new_id(),
            title="After the crash",
            lease_ms=30_000,
        )
        turn = await stub.turns.BeginTurn(begin, timeout=5)
        assert turn.owner and not turn.complete
        await append_all(
            log,
            [
                recorded_message(ALICE, turn.conversation_id, turn.user_message_id),
                recorded_message(
                    ALICE,
                    turn.conversation_id,
                    turn.assistant_message_id,
                    role=resources_pb2.ROLE_ASSISTANT,
                    reply_to=turn.user_message_id,
                ),
            ],
        )
        get = turn_pb2.GetTurnRequest(owner=ALICE, user_message_id=turn.user_message_id)

        async def answered() -> bool:
            response = await stub.turns.GetTurn(get, timeout=5)
            return response.HasField("assistant_message")

        await eventually(answered, within=30, what="the turn's answer")
        replay = await stub.turns.BeginTurn(begin, timeout=5)
        assert (replay.owner, replay.complete) == (False, True)
        assert replay.assistant_message_id == turn.assistant_message_id

    assert await terminate(second) < GRACE_SECONDS


def violations(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    fields = []
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            fields += [v.field for v in bad_request.field_violations]
    return fields


async def test_rpcs_are_owner_scoped_and_validated(
    postgres_database: str, services: Callable[[], Awaitable[Service]]
) -> None:
    service = await services()
    log = PostgresMessageLog(postgres_database)
    async with client(service) as stub:
        conversation_ids = []
        for i in range(5):
            turn = await stub.turns.BeginTurn(
                turn_pb2.BeginTurnRequest(
                    owner=ALICE,
                    user_message_id=new_id(),
                    assistant_message_id=new_id(),
                    title=f"chat {i}",
                ),
                timeout=5,
            )
            conversation_ids.append(turn.conversation_id)

        # Paging: 5 conversations in pages of 2, newest first, each exactly once.
        seen: list[str] = []
        token = ""
        while True:
            response = await stub.conversations.ListConversations(
                conversation_pb2.ListConversationsRequest(
                    owner=ALICE,
                    page=gateway_pb2.ListConversationsRequest(page_size=2, page_token=token),
                ),
                timeout=5,
            )
            seen += [c.conversation_id for c in response.page.conversations]
            token = response.page.next_page_token
            if not token:
                break
        assert sorted(seen) == sorted(conversation_ids) and len(seen) == 5

        invalid: list[tuple[Callable[[], Awaitable[object]], str]] = [
            (
                lambda: stub.conversations.ListConversations(
                    conversation_pb2.ListConversationsRequest(
                        owner=ALICE, page=gateway_pb2.ListConversationsRequest(page_size=101)
                    ),
                    timeout=5,
                ),
                "page.page_size",
            ),
            (
                lambda: stub.conversations.ListConversations(
                    conversation_pb2.ListConversationsRequest(
                        owner=ALICE, page=gateway_pb2.ListConversationsRequest(page_token="%%")
                    ),
                    timeout=5,
                ),
                "page.page_token",
            ),
            (
                lambda: stub.turns.BeginTurn(
                    turn_pb2.BeginTurnRequest(owner=ALICE, assistant_message_id=new_id()),
                    timeout=5,
                ),
                "user_message_id",
            ),
            (
                lambda: stub.turns.GetTurn(
                    turn_pb2.GetTurnRequest(user_message_id=new_id()), timeout=5
                ),
                "owner.tenant_id",
            ),
            (
                lambda: stub.conversations.SubmitFeedback(
                    conversation_pb2.SubmitFeedbackRequest(
                        owner=ALICE, feedback=gateway_pb2.SubmitFeedbackRequest(message_id=new_id())
                    ),
                    timeout=5,
                ),
                "feedback.rating",
            ),
        ]
        for call, field in invalid:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call()
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, field
            assert violations(caught.value) == [field]

        # Another tenant's or user's conversation does not exist for them.
        for stranger in (BOB, ALICE_ELSEWHERE):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.conversations.GetConversation(
                    conversation_pb2.GetConversationRequest(
                        owner=stranger,
                        request=gateway_pb2.GetConversationRequest(
                            conversation_id=conversation_ids[0]
                        ),
                    ),
                    timeout=5,
                )
            assert caught.value.code() is grpc.StatusCode.NOT_FOUND

        # Feedback on a stored answer, then deletion takes everything away.
        answer_id = new_id()
        await append_all(
            log,
            [
                recorded_message(
                    ALICE, conversation_ids[0], answer_id, role=resources_pb2.ROLE_ASSISTANT
                )
            ],
        )
        feedback = conversation_pb2.SubmitFeedbackRequest(
            owner=ALICE,
            feedback=gateway_pb2.SubmitFeedbackRequest(
                message_id=answer_id, rating=gateway_pb2.RATING_THUMBS_UP
            ),
        )

        async def rated() -> bool:
            try:
                await stub.conversations.SubmitFeedback(feedback, timeout=5)
            except grpc.aio.AioRpcError as error:
                assert error.code() is grpc.StatusCode.NOT_FOUND
                return False
            return True

        await eventually(rated, within=30, what="feedback on the stored answer")
        await stub.conversations.DeleteConversation(
            conversation_pb2.DeleteConversationRequest(
                owner=ALICE, conversation_id=conversation_ids[0]
            ),
            timeout=5,
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.conversations.SubmitFeedback(feedback, timeout=5)
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND

        created = await stub.identity.CreateApiKey(
            identity_pb2.CreateApiKeyRequest(owner=BOB, label="ci"), timeout=5
        )
        key = await stub.identity.GetApiKey(
            identity_pb2.GetApiKeyRequest(key_id=created.key_id), timeout=5
        )
        assert key.owner == BOB and len(key.secret_sha256) == 32 and not key.revoked
        assert created.api_key.startswith(f"cp_{created.key_id}_")

    await terminate(service)
