"""Real engines for benchmarks: scripts/infra/engines.py started into a temporary state dir
and stopped afterwards, as the tests and `make infra-up` do."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from bench.harness import Options, progress

ENGINES_PY = Path(__file__).resolve().parents[1] / "scripts" / "infra" / "engines.py"


async def engines_command(*arguments: str) -> None:
    """Runs engines.py with `arguments`; raises with its stderr on failure."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ENGINES_PY),
        *arguments,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"engines.py {arguments[0]} failed: {stderr.decode()[-3000:]}")


def read_env(path: Path) -> dict[str, str]:
    """The KEY=VALUE lines of engines.env."""
    env = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            env[key] = value
    return env


@contextlib.asynccontextmanager
async def running_engines(options: Options, only: str, label: str) -> AsyncIterator[dict[str, str]]:
    """The engines named in `only` (e.g. "postgres,kafka"); yields their engines.env."""
    state_dir = Path(tempfile.mkdtemp(prefix=f"chatplane-bench-{label}-"))
    try:
        await engines_command("up", "--only", only, "--state-dir", str(state_dir))
        try:
            yield read_env(state_dir / "engines.env")
        finally:
            await engines_command("down", "--only", only, "--state-dir", str(state_dir))
    finally:
        if options.keep_data:
            progress(options, f"{label}: engine state and logs kept in {state_dir}")
        else:
            shutil.rmtree(state_dir, ignore_errors=True)
