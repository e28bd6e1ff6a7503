"""A headless Chromium for the web tests: web/e2e/driver.mjs (Playwright) run by Node, one
JSON command per line on its stdin and one reply per line on its stdout."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DRIVER = REPO / "web" / "e2e" / "driver.mjs"
CHROMIUM = Path("/usr/bin/chromium")
_START_TIMEOUT = 60.0


class BrowserError(AssertionError):
    """A browser command failed (a selector not found in time, an exception in the page)."""


class Browser:
    """One page in a fresh Chromium profile; screenshots go to `out_dir`."""

    def __init__(self, process: asyncio.subprocess.Process, out_dir: Path) -> None:
        self._process = process
        self._next_id = 1
        self.out_dir = out_dir

    async def call(self, op: str, timeout: float = 30.0, **args: Any) -> Any:
        """Runs one driver operation and returns its value."""
        assert self._process.stdin is not None and self._process.stdout is not None
        command_id = self._next_id
        self._next_id += 1
        self._process.stdin.write(json.dumps({"id": command_id, "op": op, "args": args}).encode())
        self._process.stdin.write(b"\n")
        await self._process.stdin.drain()
        reply = await asyncio.wait_for(self._read_reply(), timeout)
        assert reply["id"] == command_id, reply
        if not reply["ok"]:
            raise BrowserError(f"{op}({args}): {reply['error']}")
        return reply["value"]

    async def _read_reply(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = await self._process.stdout.readline()
        if not line:
            raise BrowserError("the browser driver exited; see driver.log")
        reply: dict[str, Any] = json.loads(line)
        return reply

    # Shorthands for the common operations.

    async def goto(self, url: str) -> int:
        status: int = await self.call("goto", url=url)
        return status

    async def fill(self, selector: str, value: str) -> None:
        await self.call("fill", selector=selector, value=value)

    async def click(self, selector: str) -> None:
        await self.call("click", selector=selector)

    async def text(self, selector: str) -> str | None:
        value: str | None = await self.call("text", selector=selector)
        return value

    async def attribute(self, selector: str, name: str) -> str | None:
        value: str | None = await self.call("attribute", selector=selector, name=name)
        return value

    async def count(self, selector: str) -> int:
        value: int = await self.call("count", selector=selector)
        return value

    async def wait_for(self, selector: str, state: str = "visible", timeout: float = 15.0) -> None:
        await self.call(
            "waitFor",
            timeout=timeout + 5,
            selector=selector,
            state=state,
            timeoutMs=int(timeout * 1000),
        )

    async def wait_until(self, expression: str, arg: Any = None, timeout: float = 15.0) -> Any:
        """Waits until the JavaScript function `expression(arg)` returns a truthy value."""
        return await self.call(
            "waitForFunction",
            timeout=timeout + 5,
            expression=expression,
            arg=arg,
            timeoutMs=int(timeout * 1000),
        )

    async def evaluate(self, expression: str, arg: Any = None) -> Any:
        return await self.call("evaluate", expression=expression, arg=arg)

    async def screenshot(self, name: str) -> Path:
        path = self.out_dir / f"{name}.png"
        await self.call("screenshot", path=str(path))
        return path

    async def console(self) -> list[dict[str, str]]:
        """Console messages and page errors since the last call."""
        messages: list[dict[str, str]] = await self.call("console")
        return messages


def browser_available() -> str | None:
    """Why the browser test cannot run here, or None when it can."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (scripts/install-system-deps.sh installs it)"
    if shutil.which("node") is None:
        return "node is missing"
    if not (REPO / "web" / "node_modules" / "playwright-core").is_dir():
        return "web/node_modules is missing (make web)"
    return None


def _fresh_profile(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    profile = out_dir / "chromium-profile"
    profile.mkdir()
    return profile


@contextlib.asynccontextmanager
async def open_browser(out_dir: Path) -> AsyncIterator[Browser]:
    """Chromium with a fresh profile under `out_dir`, closed afterwards."""
    profile = _fresh_profile(out_dir)
    env = {**os.environ, "CHATPLANE_E2E_USER_DATA_DIR": str(profile)}
    with (out_dir / "driver.log").open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            "node",
            str(DRIVER),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            env=env,
            cwd=REPO / "web",
            limit=16 * 1024 * 1024,
        )
    browser = Browser(process, out_dir)
    try:
        ready = await asyncio.wait_for(browser._read_reply(), _START_TIMEOUT)
        assert ready == {"id": 0, "ok": True, "value": "ready"}, ready
        yield browser
    finally:
        with contextlib.suppress(Exception):
            await browser.call("close", timeout=10)
        if process.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 10)
        if process.returncode is None:
            process.kill()
            await process.wait()
        shutil.rmtree(profile, ignore_errors=True)
