"""Builds the Go example client (clients/go) once per session and runs it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CLIENT_DIR = REPO / "clients" / "go"
CACHE = Path(os.environ.get("CHATPLANE_CACHE", Path.home() / ".cache" / "chatplane"))


def go_env() -> dict[str, str]:
    """The build and module caches under ~/.cache/chatplane, so a rebuild takes a second."""
    return {
        **os.environ,
        "GOCACHE": str(CACHE / "go-build"),
        "GOMODCACHE": str(CACHE / "go-mod"),
        "GOFLAGS": "-modcacherw -buildvcs=false",
    }


def build(out_dir: Path) -> Path:
    """`go build` of clients/go into out_dir; fails the test with Go's message if it breaks."""
    go = shutil.which("go")
    assert go, "the Go toolchain is needed to build clients/go (see docs/clients.md)"
    binary = out_dir / "chatplane-chat"
    proc = subprocess.run(
        [go, "build", "-trimpath", "-o", str(binary), "."],
        cwd=CLIENT_DIR,
        env=go_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"go build failed:\n{proc.stderr}"
    return binary


@dataclass
class Run:
    """One finished run of the Go client."""

    returncode: int
    stdout: str
    stderr: str

    def events(self) -> list[dict[str, Any]]:
        """The -json output: one protobuf-JSON ChatResponse per line."""
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


async def run(binary: Path, *args: str, timeout: float = 60) -> Run:
    """Runs the client without blocking the event loop (the stack shares it)."""
    proc = await asyncio.create_subprocess_exec(
        str(binary),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())
