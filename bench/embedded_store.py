"""The embedded profile's system of record for the benchmarks that measure it in process: the
wheel's PostgreSQL run as `chatplane up` runs it (launcher/postgres_server.py: durable, fsync
on) in a temporary folder, and a fresh database for each store a benchmark opens."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from psycopg.conninfo import make_conninfo

from chatplane.launcher.postgres_server import PostgresServer
from chatplane.persistence.store.postgres import PostgresConversationStore


class EmbeddedDatabases:
    """Opens stores on new databases of one running server."""

    def __init__(self, server: PostgresServer, dsn: str) -> None:
        self._server = server
        self._dsn = dsn

    async def open_store(self, name: str, **options: Any) -> PostgresConversationStore:
        """A store on a new, empty database `name` (its schema migrated)."""
        await asyncio.to_thread(
            self._server.psql, "postgres", f'CREATE DATABASE "{name}" OWNER chatplane'
        )
        return await PostgresConversationStore.open(self.dsn_of(name), **options)

    def dsn_of(self, name: str) -> str:
        """The DSN of database `name` (where the embedded profile keeps its message log too)."""
        return make_conninfo(self._dsn, dbname=name)


@contextlib.contextmanager
def embedded_postgres(folder: Path) -> Iterator[EmbeddedDatabases]:
    """The server in `folder`/postgres for the block; stopped after it."""
    server = PostgresServer(folder / "postgres")
    dsn = server.start()
    try:
        yield EmbeddedDatabases(server, dsn)
    finally:
        server.stop()
