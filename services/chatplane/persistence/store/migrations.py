"""Schema migrations shipped as numbered SQL files (`persistence/migrations/NNNN_name.sql`),
read in order; the store applies them and records the version reached."""

from __future__ import annotations

import importlib.resources
import re
from dataclasses import dataclass

_MIGRATION_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: `version` N is applied after N-1, exactly once."""

    version: int
    name: str
    script: str


def shipped_migrations() -> list[Migration]:
    """The migrations shipped in chatplane/persistence/migrations, in order."""
    folder = importlib.resources.files("chatplane.persistence").joinpath("migrations")
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match is not None:
            found.append(Migration(int(match[1]), entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda migration: migration.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..n without gaps: {found}")
    return found
