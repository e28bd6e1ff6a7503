"""The emulator as a child process for tests and benchmarks: started on a free port, read
until ready, controlled through its HTTP control API, stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp

_READY_TIMEOUT_SECONDS = 30.0


class EmulatorProcess:
    """A running emulator: its base URL and its control API."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._session = aiohttp.ClientSession(base_url=self.url)

    async def set_rules(self, rules: Sequence[dict[str, Any]]) -> None:
        """Replaces the rules (see chatplane.llm_emulator.behaviour.Rule)."""
        async with self._session.put("/emulator/rules", json={"rules": list(rules)}) as response:
            response.raise_for_status()

    async def requests(self) -> list[dict[str, Any]]:
        """Every request received so far, oldest first."""
        async with self._session.get("/emulator/requests") as response:
            response.raise_for_status()
            payload = await response.json()
        requests: list[dict[str, Any]] = payload["requests"]
        return requests

    async def reset(self) -> None:
        """No rules, no records, an empty prompt cache."""
        async with self._session.post("/emulator/reset") as response:
            response.raise_for_status()

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        await self._session.close()
        if self.process.returncode is None:
            self.process.terminate()
            try:
                async with asyncio.timeout(5):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


@contextlib.asynccontextmanager
async def running_emulator(*arguments: str) -> AsyncIterator[EmulatorProcess]:
    """`python -m chatplane.llm_emulator --port 0 ARGUMENTS`, until the block ends."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chatplane.llm_emulator",
        "--port",
        "0",
        *arguments,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(_READY_TIMEOUT_SECONDS):
            line = await process.stdout.readline()
        port = int(json.loads(line)["port"])
    except BaseException:
        process.kill()
        await process.wait()
        raise
    emulator = EmulatorProcess(process, port)
    try:
        yield emulator
    finally:
        await emulator.stop()
