"""The system of record of the configured profile."""

from __future__ import annotations

from chatplane.common.errors import ConfigError
from chatplane.common.settings import Settings
from chatplane.persistence.store.base import ConversationStore
from chatplane.persistence.store.postgres import PostgresConversationStore
from chatplane.persistence.store.sqlite import SqliteConversationStore


class StoreConfigurationError(ConfigError):
    """The settings do not say where the configured profile's store is."""


async def open_store(settings: Settings) -> ConversationStore:
    """The embedded SQLite store, or PostgreSQL in the cluster profile (its schema migrated
    before this returns)."""
    if settings.profile == "cluster":
        if not settings.postgres_dsn:
            raise StoreConfigurationError(
                "the cluster profile stores conversations in PostgreSQL, but no DSN is set:"
                " set CHATPLANE_POSTGRES_DSN (or --postgres-dsn), e.g."
                " postgresql://chatplane@127.0.0.1:5432/chatplane"
                " (scripts/infra/engines.py up writes it to engines.env)"
            )
        return await PostgresConversationStore.open(
            settings.postgres_dsn, pool_max_size=settings.postgres_pool_max_size
        )
    return await SqliteConversationStore.open(settings.data_path("persistence.db"))
