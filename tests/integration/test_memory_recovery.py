"""Memory recovers what it missed: turns answered while it was down are indexed once it is
back (its consumer group resumes on the message log), and `chatplane memory rebuild`
re-indexes a lost index from the system of record."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import grpc
import psycopg

from chatplane.common.topics import MESSAGES_TOPIC
from chatplane.log import PostgresMessageLog
from chatplane.memory.turn_indexer import CONSUMER_GROUP
from tests.integration.stack_client import (
    FAST_PACE,
    Client,
    create_key,
    memory_recalls,
    poll,
    running_stack,
    store_dsn,
    wait_until_indexed,
)

CHATPLANE = str(Path(sys.executable).parent / "chatplane")


ENV = {**FAST_PACE, "CHATPLANE_RATE_LIMIT_BURST": "1000"}


async def memory_caught_up(data_dir: Path) -> bool:
    """Memory's consumer group has committed everything on the messages topic."""
    async with PostgresMessageLog(store_dsn(data_dir)).consumer(
        CONSUMER_GROUP, [MESSAGES_TOPIC]
    ) as observer:
        return await observer.lag() == 0


async def test_turns_answered_while_memory_was_down_are_indexed_when_it_is_back(
    tmp_path: Path,
) -> None:
    async with (
        running_stack(tmp_path, ENV) as stack,
        grpc.aio.insecure_channel(stack.info().address("gateway")) as channel,
    ):
        client = Client(channel, await create_key(stack, "t", "u"))
        assert await stack.services["memory"].stop(timeout=10) == 0
        missed = await client.chat("My bicycle is a green Gazelle from 1987")
        assert missed.started is not None and missed.done is not None
        assert missed.started.started.memory_degraded
        await stack.start_service("memory")
        missed_id = missed.started.started.user_message_id
        await wait_until_indexed(stack, "t", "u", "Which bicycle do I ride?", missed_id)


async def test_rebuild_reindexes_a_lost_index_from_the_system_of_record(tmp_path: Path) -> None:
    async with (
        running_stack(tmp_path, ENV) as stack,
        grpc.aio.insecure_channel(stack.info().address("gateway")) as channel,
    ):
        client = Client(channel, await create_key(stack, "t", "u"))
        turn = await client.chat("The spare key is under the blue flowerpot")
        assert turn.started is not None
        remembered_id = turn.started.started.user_message_id
        # Memory indexes the turn from the log, shortly after `done`.
        await wait_until_indexed(stack, "t", "u", "Where is the spare key?", remembered_id)
        await poll(lambda: memory_caught_up(tmp_path), timeout=30)

        assert await stack.services["memory"].stop(timeout=10) == 0
        # The index is lost: its schema dropped (Memory creates it again, empty, at start).
        with psycopg.connect(store_dsn(tmp_path), autocommit=True) as database:
            database.execute("DROP SCHEMA memory CASCADE")
        await stack.start_service("memory")
        assert not await memory_recalls(stack, "t", "u", "Where is the spare key?", remembered_id)

        rebuilt = await asyncio.to_thread(
            subprocess.run,
            [CHATPLANE, "--data-dir", str(tmp_path), "memory", "rebuild"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "CHATPLANE_DATA_DIR": str(tmp_path)},
            check=False,
        )
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert "re-indexed" in rebuilt.stdout
        assert await memory_recalls(stack, "t", "u", "Where is the spare key?", remembered_id)
