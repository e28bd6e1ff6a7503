"""The memory index of the configured profile."""

from __future__ import annotations

from chatplane.common.errors import ConfigError
from chatplane.common.settings import Settings
from chatplane.memory.index.base import MemoryIndex
from chatplane.memory.index.opensearch import OpenSearchMemoryIndex
from chatplane.memory.index.postgres import PostgresMemoryIndex


def open_memory_index(settings: Settings) -> MemoryIndex:
    """PostgreSQL (pgvector + full-text search) in the embedded profile, OpenSearch in the
    cluster profile.

    Raises ConfigError at startup when the cluster profile has no OpenSearch URL. OpenSearch
    itself is first contacted on first use, so the service starts (and answers Unavailable)
    while the engine is down.
    """
    if settings.profile == "cluster":
        if not settings.opensearch_url:
            raise ConfigError(
                "the cluster profile needs CHATPLANE_OPENSEARCH_URL (the OpenSearch base URL, "
                "e.g. from the engines.env that `scripts/infra/engines.py up` writes)"
            )
        return OpenSearchMemoryIndex(settings.opensearch_url, index=settings.opensearch_index)
    if not settings.postgres_dsn:
        raise ConfigError(
            "the embedded profile's memory index needs CHATPLANE_POSTGRES_DSN (the PostgreSQL "
            "that `chatplane up` starts)"
        )
    return PostgresMemoryIndex(settings.postgres_dsn)
