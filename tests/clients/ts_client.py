"""Builds the Node.js example client (clients/ts/chat.ts, gRPC-Web with the generated
TypeScript) once per session and runs it."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

from tests.clients.go_client import REPO, Run

TS_DIR = REPO / "clients" / "ts"


def build(out_dir: Path) -> Path:
    """Installs the pinned npm packages (cached) and compiles chat.ts to CommonJS in out_dir."""
    plugins = subprocess.run(
        [str(REPO / "scripts" / "codegen-plugins.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert plugins.returncode == 0, plugins.stderr
    tsc_bin = str(TS_DIR / "node_modules" / ".bin" / "tsc")
    tsc = subprocess.run(
        [tsc_bin, "-p", "tsconfig.build.json", "--outDir", str(out_dir)],
        cwd=TS_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert tsc.returncode == 0, tsc.stdout + tsc.stderr
    return out_dir / "clients" / "ts" / "chat.js"


async def run(script: Path, *args: str, timeout: float = 60) -> Run:
    """`node chat.js args…`, its packages found through NODE_PATH."""
    node = shutil.which("node")
    assert node, "Node.js is needed to run clients/ts/chat.ts"
    proc = await asyncio.create_subprocess_exec(
        node,
        str(script),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NODE_PATH": str(TS_DIR / "node_modules")},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())
