"""The embedded profile's PostgreSQL (launcher/postgres_server.py): a cluster made on the first
start with the chatplane role, database and pgvector, password authentication, a fast stop
that leaves no process, the data found again by the next start, the cluster relocated when
the server's user cannot reach the data dir; and a service started alone without a DSN."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from chatplane.launcher.postgres_server import (
    ORPHAN_MIN_AGE_SECONDS,
    RELOCATED_ROOT,
    PostgresServer,
    collect_orphans,
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PostgresServer]:
    started = PostgresServer(tmp_path / "data" / "postgres")
    yield started
    started.stop()


def test_first_start_makes_the_database_and_the_next_finds_it(server: PostgresServer) -> None:
    dsn = server.start()
    with psycopg.connect(dsn, autocommit=True) as connection:
        assert connection.execute("SELECT current_user, current_database()").fetchone() == (
            "chatplane",
            "chatplane",
        )
        # pgvector is there without a superuser; the role is not one.
        connection.execute("CREATE TABLE kept (embedding vector(3))")
        connection.execute("INSERT INTO kept VALUES ('[1,2,3]')")
        assert connection.execute("SELECT rolsuper FROM pg_roles WHERE rolname = 'chatplane'")
        assert not connection.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone()[0]  # type: ignore[index]
    pid = server.pid
    assert pid and server.port == int(conninfo_to_dict(dsn)["port"])  # type: ignore[arg-type]

    server.stop()
    # (A reaped or zombie postmaster: its children are gone with it.)
    assert server.pid == 0 and server.port == 0

    again = server.start()
    with psycopg.connect(again) as connection:
        assert connection.execute("SELECT embedding::text FROM kept").fetchall() == [("[1,2,3]",)]
    # A second start of a running server keeps it.
    assert server.start() == again and server.pid != pid


def test_connections_need_the_clusters_password(server: PostgresServer) -> None:
    dsn = server.start()
    password = conninfo_to_dict(dsn)["password"]
    assert password and len(str(password)) >= 24
    for wrong in ("", "not-the-password"):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(make_conninfo(dsn, password=wrong), connect_timeout=5).close()
    secret_file = server.pgdata / "chatplane.password"
    assert secret_file.stat().st_mode & 0o077 == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="only root's server runs as another user")
def test_an_unreachable_data_dir_gets_a_linked_cluster_removed_with_it(tmp_path: Path) -> None:
    hidden = tmp_path / "hidden"
    hidden.mkdir(mode=0o700)
    server = PostgresServer(hidden / "postgres")
    try:
        server.start()
        home = server.pgdata.resolve()
        assert server.pgdata.is_symlink() and home.is_relative_to(RELOCATED_ROOT)
    finally:
        server.stop()
    collect_orphans()
    assert home.exists(), "the data dir still links to it"
    server.pgdata.unlink()
    collect_orphans()
    assert home.exists(), "a cluster younger than ORPHAN_MIN_AGE_SECONDS may be being placed"
    aged = time.time() - ORPHAN_MIN_AGE_SECONDS - 1
    os.utime(home.parent, (aged, aged))
    collect_orphans()
    assert not home.parent.exists()


def test_a_service_started_alone_without_a_dsn_fails_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CHATPLANE_POSTGRES_DSN"}
    for profile in ("embedded", "cluster"):
        finished = subprocess.run(
            [sys.executable, "-m", "chatplane.persistence", "--data-dir", str(tmp_path)],
            env={**env, "CHATPLANE_PROFILE": profile},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert finished.returncode == 2, finished.stderr
        # One line for the operator beside the JSON log line (common/entrypoint.py).
        (line,) = [x for x in finished.stderr.splitlines() if x and not x.startswith("{")]
        assert line.startswith("chatplane persistence: ") and "CHATPLANE_POSTGRES_DSN" in line
        assert "Traceback" not in finished.stderr
