"""Test-suite wide settings."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tests.engine_processes import ENGINES_PY, Engines, load_engines


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "engines: needs the real engines (scripts/infra/engines.py up)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests under tests/integration start real processes: mark them so they can be selected.
    Files with a `long` test and the cluster fault tests run first: under `-n 2 --dist
    loadfile` (make test) a file runs whole on one worker, and the longest ones started last
    would leave the other worker idle at the end."""
    for item in items:
        if "/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)
    long_files = {item.path for item in items if item.get_closest_marker("long")}
    items.sort(key=lambda item: (item.path not in long_files, "/cluster/" not in str(item.path)))


@pytest.fixture(scope="session")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    """All three engines up for the session; down (data dirs removed) afterwards."""
    state_dir = tmp_path_factory.mktemp("engines-state")
    cmd = [sys.executable, str(ENGINES_PY), "up", "--state-dir", str(state_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    try:
        if proc.returncode != 0:
            pytest.fail(
                f"engines up failed ({proc.returncode}):\n{proc.stderr[-6000:]}", pytrace=False
            )
        yield load_engines(state_dir)
    finally:
        down = subprocess.run(
            [sys.executable, str(ENGINES_PY), "down", "--state-dir", str(state_dir)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert down.returncode == 0, down.stderr


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    """PostgreSQL alone (the pinned wheel's server, with pgvector) for the session, for the
    tests that need the database but not Kafka or OpenSearch; down afterwards."""
    state_dir = tmp_path_factory.mktemp("postgres-state")
    base = [sys.executable, str(ENGINES_PY)]
    up = subprocess.run(
        [*base, "up", "--only", "postgres", "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    try:
        if up.returncode != 0:
            failure = f"postgres up failed ({up.returncode}):\n{up.stderr[-6000:]}"
            pytest.fail(failure, pytrace=False)
        yield load_engines(state_dir)
    finally:
        down = subprocess.run(
            [*base, "down", "--state-dir", str(state_dir)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert down.returncode == 0, down.stderr


@contextlib.contextmanager
def fresh_database(server: Engines) -> Iterator[str]:
    """The DSN of a new database on `server` (pgvector installed), dropped afterwards."""
    maintenance = server.env["CHATPLANE_POSTGRES_DSN"]
    name = f"test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(maintenance, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(maintenance, dbname=name)
    finally:
        # As the superuser: FORCE must end every session in it, whoever's (a background
        # worker of another role cannot be ended by the owner).
        superuser = make_conninfo(maintenance, user="postgres", dbname="postgres")
        with psycopg.connect(superuser, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_database(postgres_server: Engines) -> Iterator[str]:
    """The DSN of a database made for this test (pgvector installed), dropped after it."""
    with fresh_database(postgres_server) as dsn:
        yield dsn


@pytest.fixture(scope="module")
def module_postgres_database(postgres_server: Engines) -> Iterator[str]:
    """The DSN of a database made for this module, for module-scoped stacks."""
    with fresh_database(postgres_server) as dsn:
        yield dsn
