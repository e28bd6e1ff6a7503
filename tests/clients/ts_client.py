"""Builds the Node.js example client (clients/ts/chat.ts, gRPC-Web with the generated
TypeScript) once per session and runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.clients.client_process import REPO, Run, run_program

TS_DIR = REPO / "clients" / "ts"


def install_packages() -> None:
    """Installs the pinned npm packages of clients/ts (only when package-lock.json changed)."""
    plugins = subprocess.run(
        [str(REPO / "scripts" / "codegen-plugins.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert plugins.returncode == 0, plugins.stderr


def tsc(*args: str, cwd: Path) -> None:
    """The pinned TypeScript compiler of clients/ts; fails the test with its message."""
    proc = subprocess.run(
        [str(TS_DIR / "node_modules" / ".bin" / "tsc"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def build(out_dir: Path) -> Path:
    """Installs the pinned npm packages (cached) and compiles chat.ts to CommonJS in out_dir."""
    install_packages()
    tsc("-p", "tsconfig.build.json", "--outDir", str(out_dir), cwd=TS_DIR)
    return out_dir / "clients" / "ts" / "chat.js"


async def run(script: Path, *args: str, timeout: float = 60) -> Run:
    """`node chat.js args…`, its packages found through NODE_PATH."""
    node = shutil.which("node")
    assert node, "Node.js is needed to run clients/ts/chat.ts"
    env = {**os.environ, "NODE_PATH": str(TS_DIR / "node_modules")}
    return await run_program([node, str(script), *args], timeout=timeout, env=env)
