"""Builds the Go example client (clients/go) once per session and runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.clients.client_process import REPO, Run, run_program

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


def go(*args: str) -> subprocess.CompletedProcess[str]:
    """`go args…` in clients/go with the cached build and module directories."""
    toolchain = shutil.which("go")
    assert toolchain, "the Go toolchain is needed to build clients/go (see docs/clients.md)"
    return subprocess.run(
        [toolchain, *args],
        cwd=CLIENT_DIR,
        env=go_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def build(out_dir: Path) -> Path:
    """`go build` of clients/go into out_dir; fails the test with Go's message if it breaks."""
    binary = out_dir / "chatplane-chat"
    proc = go("build", "-trimpath", "-o", str(binary), ".")
    assert proc.returncode == 0, f"go build failed:\n{proc.stderr}"
    return binary


async def run(binary: Path, *args: str, timeout: float = 60) -> Run:
    """Runs the client without blocking the event loop (the stack shares it)."""
    return await run_program([str(binary), *args], timeout=timeout)
