"""How the client tests run a client program: one finished run (exit code, output), without
blocking the event loop the stack shares."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    """One finished run of a client."""

    returncode: int
    stdout: str
    stderr: str

    def events(self) -> list[dict[str, Any]]:
        """The -json output: one protobuf-JSON ChatResponse per line."""
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


async def run_program(
    argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None
) -> Run:
    """Runs argv to its end (killed after `timeout` seconds, raising TimeoutError)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=None if env is None else dict(env),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())
