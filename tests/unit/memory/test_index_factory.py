"""The memory index of each profile, and the one-line ConfigError when its engine has no
address (memory.index.factory)."""

from __future__ import annotations

import pytest

from chatplane.common.errors import ConfigError
from chatplane.common.settings import Settings
from chatplane.memory.index.factory import open_memory_index
from chatplane.memory.index.opensearch import OpenSearchMemoryIndex
from chatplane.memory.index.postgres import PostgresMemoryIndex


async def test_the_embedded_profile_opens_postgres() -> None:
    # Nothing is contacted before the first call: a DSN of nowhere still builds the index.
    index = open_memory_index(
        Settings(profile="embedded", postgres_dsn="postgresql://nobody@127.0.0.1:9/none")
    )
    try:
        assert isinstance(index, PostgresMemoryIndex)
    finally:
        await index.close()


async def test_the_cluster_profile_opens_opensearch() -> None:
    index = open_memory_index(Settings(profile="cluster", opensearch_url="http://127.0.0.1:9"))
    try:
        assert isinstance(index, OpenSearchMemoryIndex)
    finally:
        await index.close()


@pytest.mark.parametrize(
    ("profile", "variable"),
    [("embedded", "CHATPLANE_POSTGRES_DSN"), ("cluster", "CHATPLANE_OPENSEARCH_URL")],
)
def test_a_missing_engine_address_is_a_config_error(profile: str, variable: str) -> None:
    settings = Settings(profile=profile, postgres_dsn="", opensearch_url="")
    with pytest.raises(ConfigError, match=variable) as raised:
        open_memory_index(settings)
    assert "\n" not in str(raised.value)
