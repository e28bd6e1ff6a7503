"""The memory index of the configured profile."""

from __future__ import annotations

from chatplane.common.settings import Settings
from chatplane.memory.index.base import MemoryIndex
from chatplane.memory.index.embedded import EmbeddedMemoryIndex


def open_memory_index(settings: Settings) -> MemoryIndex:
    """The embedded on-disk index, or OpenSearch in the cluster profile."""
    return EmbeddedMemoryIndex(settings.data_path("memory.db"))
