"""The system of record: PostgreSQL in both profiles (in the embedded one, the server that
`chatplane up` starts in the data dir), its schema migrated before the store is handed out."""

from __future__ import annotations

from chatplane.common.errors import ConfigError
from chatplane.common.settings import Settings
from chatplane.persistence.store.base import ConversationStore
from chatplane.persistence.store.postgres import PostgresConversationStore


class StoreConfigurationError(ConfigError):
    """The settings do not say where the store is."""


async def open_store(settings: Settings) -> ConversationStore:
    """The PostgreSQL store of `settings.postgres_dsn` (migrated to the shipped schema)."""
    if not settings.postgres_dsn:
        raise StoreConfigurationError(
            "conversations are stored in PostgreSQL, but CHATPLANE_POSTGRES_DSN is not set:"
            " start the stack with `chatplane up` (it runs PostgreSQL in the data dir) or set"
            " CHATPLANE_POSTGRES_DSN (or --postgres-dsn), e.g."
            " postgresql://chatplane@127.0.0.1:5432/chatplane"
        )
    return await PostgresConversationStore.open(
        settings.postgres_dsn, pool_max_size=settings.postgres_pool_max_size
    )
