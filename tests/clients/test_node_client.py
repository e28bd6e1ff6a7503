"""The Node.js client (clients/ts/chat.ts) without a server: the exit codes of docs/clients.md.
Against the real services through Envoy it is tested in test_three_ways.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.clients.ts_client import run

pytestmark = pytest.mark.asyncio


async def test_unreachable_server_exits_6_with_the_retry_key(ts_client: Path) -> None:
    result = await run(
        ts_client, "-url", "http://127.0.0.1:1", "-key", "k", "-message", "hi",
        "-idempotency-key", "k1",
    )  # fmt: skip
    assert result.returncode == 6
    assert result.stderr.startswith("chatplane-chat: UNAVAILABLE: ")
    assert "retry with -idempotency-key k1" in result.stderr


async def test_missing_key_is_a_usage_error(ts_client: Path) -> None:
    result = await run(ts_client, "-message", "hi", "-key", "")
    assert result.returncode == 2
    assert "-key (or $CHATPLANE_API_KEY) and -message are required" in result.stderr
