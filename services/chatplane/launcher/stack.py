"""The whole stack as four OS processes: started in dependency order (persistence, memory,
then agent, then gateway), each ready when it prints its ready line, stopped in reverse order
with SIGTERM so in-flight turns drain. In the embedded profile, without a configured
CHATPLANE_POSTGRES_DSN, the stack's own PostgreSQL (in <data dir>/postgres) starts first and
stops last. Also gives the development API key (launcher/development_key.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc

from chatplane.common import errors
from chatplane.common.tls import TlsFiles, client_channel
from chatplane.launcher.certificates import CLIENT_PARTY, SERVICE_PARTIES, party_files
from chatplane.launcher.development_key import development_key
from chatplane.launcher.postgres_server import PostgresServer

SERVICES = ("persistence", "memory", "agent", "gateway")
# Envoy in front of the Gateway (`python -m chatplane.edge`), started last when asked for.
EDGE = "edge"
# The web chat's static server (`python -m chatplane.webui`), started when asked for.
WEB = "webui"
STACK_FILE = "stack.json"
# The embedded profile's PostgreSQL cluster, inside the data dir.
POSTGRES_DIR = "postgres"
_READY_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class StackInfo:
    """Where the running stack listens; written to <data dir>/stack.json for the CLI."""

    host: str
    ports: dict[str, int]
    data_dir: str
    pids: dict[str, int]
    # The certificate directory when the stack runs on mutual TLS ("" for plaintext).
    tls_dir: str = ""
    # Each service's Prometheus endpoint port (0: none).
    metrics_ports: dict[str, int] = field(default_factory=dict)

    def address(self, service: str) -> str:
        """host:port of a service."""
        return f"{self.host}:{self.ports[service]}"

    def client_tls(self) -> TlsFiles | None:
        """The client certificate files for calling this stack, None when it is plaintext."""
        return party_files(Path(self.tls_dir), CLIENT_PARTY) if self.tls_dir else None

    def metrics_url(self, service: str) -> str:
        """The URL of a service's /metrics endpoint ("" when it has none)."""
        port = self.metrics_ports.get(service, 0)
        return f"http://{self.host}:{port}/metrics" if port else ""

    @classmethod
    def load(cls, data_dir: Path) -> StackInfo | None:
        """The info of the stack last started with this data dir, if any."""
        try:
            raw = json.loads((data_dir / STACK_FILE).read_text())
        except (OSError, ValueError):
            return None
        return cls(**raw)


class ServiceProcess:
    """One service process: started, read until ready, stopped with SIGTERM (or killed)."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name = name
        self.process = process
        self.log_path = log_path
        self.port = 0
        # Where this run's lines begin in the (appended) log.
        self.log_offset = 0
        self.metrics_port = 0
        # The service's whole ready line (the Agent's says which model answers).
        self.ready_event: dict[str, object] = {}

    @classmethod
    async def start(
        cls, name: str, args: list[str], env: Mapping[str, str], log_path: Path
    ) -> ServiceProcess:
        """Starts `python -m chatplane.<name> ARGS`, stderr (JSON logs) to `log_path`."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            offset = log.tell()
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                f"chatplane.{name}",
                *args,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env=dict(env),
            )
        service = cls(name, process, log_path)
        service.log_offset = offset
        await service._wait_ready()
        return service

    async def _wait_ready(self) -> None:
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(_READY_TIMEOUT_SECONDS):
                while True:
                    line = await self.process.stdout.readline()
                    if not line:
                        reason = _last_error(self.log_path, self.log_offset)
                        if await self.process.wait() == errors.EXIT_CONFIG_ERROR:
                            # The service refused its configuration: the operator's to fix.
                            raise errors.ConfigError(
                                f"{self.name} refused its configuration: {reason}"
                                f" (see {self.log_path})"
                            )
                        raise errors.Unavailable(
                            f"{self.name} exited before it was ready"
                            + (f": {reason}" if reason else "")
                            + f"; see {self.log_path}"
                        )
                    with contextlib.suppress(ValueError):
                        event = json.loads(line)
                        if isinstance(event, dict) and event.get("event") == "ready":
                            self.port = int(event["port"])
                            self.metrics_port = int(event.get("metrics_port", 0))
                            self.ready_event = event
                            return
        except TimeoutError:
            self.process.kill()
            raise errors.Unavailable(
                f"{self.name} was not ready in time; see {self.log_path}"
            ) from None

    async def stop(self, timeout: float) -> int:
        """SIGTERM, wait up to `timeout` (then SIGKILL); the exit code."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(timeout):
                    return await self.process.wait()
            except TimeoutError:
                self.process.kill()
        return await self.process.wait()

    def kill(self) -> None:
        """SIGKILL now (crash simulation)."""
        if self.process.returncode is None:
            self.process.kill()


def _last_error(log_path: Path, offset: int) -> str:
    """The message of the last ERROR/CRITICAL line of a service's JSON log ("" if none): why
    a service that exited at start did not come up (e.g. an invalid TLS configuration)."""
    try:
        with log_path.open("rb") as log:
            log.seek(max(offset, log_path.stat().st_size - 16_384))
            lines = log.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("level") in ("ERROR", "CRITICAL"):
                return str(record.get("message", ""))
    return ""


def running_postgres_dsn(data_dir: Path) -> str:
    """The DSN of the PostgreSQL a stack runs in `data_dir` ("" when none is running): for
    the commands that read the store of a running embedded stack directly."""
    server = PostgresServer(data_dir.resolve() / POSTGRES_DIR)
    return server.dsn() if server.port else ""


def free_port(host: str) -> int:
    """A port the OS finds free on `host` now, for a service whose address another one must
    be given before it starts (a small window remains in which something else may take it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class Stack:
    """The four services of one data dir."""

    def __init__(
        self,
        *,
        data_dir: Path,
        host: str = "127.0.0.1",
        ports: Mapping[str, int] | None = None,
        env: Mapping[str, str] | None = None,
        tls_dir: Path | None = None,
        edge: bool = False,
        web: bool = False,
    ) -> None:
        self.data_dir = data_dir.resolve()
        # Mutual TLS: each service gets its own certificate from this directory
        # (launcher/certificates.py layout); the launcher calls with the `client` one.
        self.tls_dir = tls_dir.resolve() if tls_dir is not None else None
        self.host = host
        self._ports = dict(ports or {})
        self._env = dict(os.environ if env is None else env)
        self._env["CHATPLANE_DATA_DIR"] = str(self.data_dir)
        self._env["CHATPLANE_HOST"] = host
        self._env.setdefault("PYTHONUNBUFFERED", "1")
        self.services: dict[str, ServiceProcess] = {}
        # The stack's own PostgreSQL, when it runs one (embedded profile, no DSN given).
        self.postgres: PostgresServer | None = None
        self.edge = edge
        self.web = web

    def _args(self, name: str) -> list[str]:
        args = [f"--{name}-port", str(self._ports.get(name, 0))]
        for dependency in ("agent", "memory", "persistence", "gateway"):
            if dependency in self.services:
                args += [f"--{dependency}-address", f"{self.host}:{self.services[dependency].port}"]
            elif dependency == "memory" and name != "memory" and self._ports.get("memory"):
                # Not started yet, but its port is known (reserved in start()).
                args += ["--memory-address", f"{self.host}:{self._ports['memory']}"]
        if WEB in self.services:
            # Where the edge sends every path that is not the API.
            args += ["--web-address", f"{self.host}:{self.services[WEB].port}"]
        return args

    def _service_env(self, name: str) -> dict[str, str]:
        if self.tls_dir is None or name not in SERVICE_PARTIES:
            return self._env
        return {**self._env, **party_files(self.tls_dir, name).env()}

    async def start_service(self, name: str) -> ServiceProcess:
        """Starts (or restarts) one service with the addresses of those already running."""
        service = await ServiceProcess.start(
            name, self._args(name), self._service_env(name), self.data_dir / "logs" / f"{name}.log"
        )
        if not self._ports.get(name):
            # A restart binds the same port again, so the other services find it.
            self._ports[name] = service.port
        self.services[name] = service
        self._write_info()
        return service

    async def start(self) -> StackInfo:
        """Starts all four services in dependency order (then the edge, if asked for)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            await self._start_postgres()
        except BaseException:
            await self.stop()
            raise
        # Persistence calls MemoryService (erasure, retention; docs/privacy.md) and may start
        # before it: Memory's port is chosen now, so Persistence is told its address.
        if not self._ports.get("memory"):
            self._ports["memory"] = free_port(self.host)
        try:
            # Persistence first: Memory gets the users' data keys from it (docs/security.md).
            await self.start_service("persistence")
            await asyncio.gather(
                self.start_service("memory"),
                *([self.start_service(WEB)] if self.web else []),
            )
            await self.start_service("agent")
            await self.start_service("gateway")
            if self.edge:
                await self.start_service(EDGE)
        except BaseException:
            await self.stop()
            raise
        return self.info()

    async def _start_postgres(self) -> None:
        """The embedded profile's system of record: the wheel's PostgreSQL in the data dir,
        found again by the next start; a configured DSN (or the cluster profile) skips it."""
        if self._env.get("CHATPLANE_POSTGRES_DSN") or (
            self._env.get("CHATPLANE_PROFILE", "embedded") != "embedded"
        ):
            return
        self.postgres = PostgresServer(self.data_dir / POSTGRES_DIR)
        self._env["CHATPLANE_POSTGRES_DSN"] = await asyncio.to_thread(self.postgres.start)

    def info(self) -> StackInfo:
        """Addresses and pids of the running services."""
        return StackInfo(
            host=self.host,
            ports={name: s.port for name, s in self.services.items()},
            data_dir=str(self.data_dir),
            pids={name: s.process.pid for name, s in self.services.items()},
            tls_dir=str(self.tls_dir or ""),
            metrics_ports={name: s.metrics_port for name, s in self.services.items()},
        )

    def channel(self, service: str) -> grpc.aio.Channel:
        """A channel to one of the services, with the client certificate on a TLS stack."""
        info = self.info()
        return client_channel(info.address(service), info.client_tls())

    def _write_info(self) -> None:
        (self.data_dir / STACK_FILE).write_text(json.dumps(asdict(self.info())))

    async def stop(self, timeout: float = 35.0) -> dict[str, int]:
        """Stops the services in reverse dependency order; their exit codes."""
        codes: dict[str, int] = {}
        for group in ((EDGE,), ("gateway",), ("agent",), ("memory", "persistence")):
            running = [self.services[n] for n in group if n in self.services]
            results = await asyncio.gather(*(s.stop(timeout) for s in running))
            codes.update({s.name: code for s, code in zip(running, results, strict=True)})
        # The rest (the web chat's static server) holds no state: it stops last.
        rest = [s for name, s in self.services.items() if name not in codes]
        results = await asyncio.gather(*(s.stop(timeout) for s in rest))
        codes.update({s.name: code for s, code in zip(rest, results, strict=True)})
        if self.postgres is not None:
            # After every service: Persistence drains its last batch into it.
            await asyncio.to_thread(self.postgres.stop, timeout)
            self._env.pop("CHATPLANE_POSTGRES_DSN", None)
            self.postgres = None
        return codes

    async def development_key(self) -> str:
        """The development API key (every role; docs/security.md): created on first start,
        read from the data dir later, replaced when the system of record no longer accepts it."""
        async with self.channel("persistence") as channel:
            return await development_key(channel, self.data_dir)
