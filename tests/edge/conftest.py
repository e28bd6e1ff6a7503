"""The stack the edge tests share: the four services and Envoy, started once for tests/edge/."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.edge.edge_client import EdgeStack, running_edge_stack


@pytest_asyncio.fixture(loop_scope="package", scope="package")
async def edge_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EdgeStack]:
    """Envoy in front of the real services (embedded profile), on free loopback ports."""
    async with running_edge_stack(tmp_path_factory.mktemp("edge-stack")) as running:
        yield running
