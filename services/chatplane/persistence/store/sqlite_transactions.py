"""The SQLite store's transactions, shared by its modules (store, identity, handoffs, tree,
quotas): writes take the write lock up front, reads share one snapshot."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from typing import TypeVar

_T = TypeVar("_T")


@contextlib.contextmanager
def write_transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any error). IMMEDIATE takes the write lock
    before the first read, so a check-then-write (an idempotency key, a conversation's owner)
    cannot race another connection's write."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def in_write_transaction(
    connection: sqlite3.Connection, work: Callable[[sqlite3.Connection], _T]
) -> _T:
    """`work(connection)` inside one write transaction."""
    with write_transaction(connection):
        return work(connection)


@contextlib.contextmanager
def read_transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """One snapshot for reads that span statements (a conversation and its messages)."""
    connection.execute("BEGIN")
    try:
        yield
    finally:
        with contextlib.suppress(sqlite3.Error):
            connection.execute("COMMIT")
