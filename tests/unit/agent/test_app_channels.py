"""The Agent's wiring (agent/app.py) opens one channel per service it calls and closes each
exactly once when it stops: counted through the function that builds them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from chatplane.agent import app
from chatplane.common.settings import Settings
from chatplane.common.tls import TlsCredentials


async def test_the_agent_opens_one_channel_per_service_and_closes_each_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: Counter[str] = Counter()
    closed: Counter[str] = Counter()
    build = app.internal_channel

    def counted_channel(address: str, tls: TlsCredentials | None = None) -> grpc.aio.Channel:
        channel = build(address, tls)
        opened[address] += 1
        close = channel.close

        async def counted_close(grace: float | None = None) -> None:
            closed[address] += 1
            await close(grace)

        channel.close = counted_close  # type: ignore[method-assign]
        return channel

    async def serve_and_stop(*, on_stop: Callable[[], Awaitable[None]], **_: object) -> None:
        # As a SIGTERM right after start would: the service's clean-up runs once.
        await on_stop()

    monkeypatch.setattr(app, "internal_channel", counted_channel)
    monkeypatch.setattr(app, "serve", serve_and_stop)
    # Nothing listens on either address: the registry's first poll fails and is only logged.
    settings = Settings(
        data_dir=tmp_path,
        llm_backend="offline",
        memory_address="127.0.0.1:9",
        persistence_address="[::1]:9",
        # The message log is not reached either: the Agent connects on the first append.
        postgres_dsn="postgresql://chatplane@127.0.0.1:9/chatplane",
        internal_call_timeout_seconds=1.0,
    )
    await app.run(settings)
    assert opened == {"127.0.0.1:9": 1, "[::1]:9": 1}
    assert closed == opened
