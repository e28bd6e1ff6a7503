"""The real engines (PostgreSQL, Kafka, OpenSearch) as plain processes.

The engines are started through ``scripts/infra/engines.py`` (a subprocess, like
``make infra-up``) into a throwaway state dir, and always brought down again.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENGINES_PY = REPO / "scripts" / "infra" / "engines.py"


@dataclass(frozen=True)
class Engines:
    """A running set of engines: their env (engines.env values) and raw state."""

    state_dir: Path
    env: dict[str, str]
    state: dict[str, dict[str, object]]

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run engines.py against this state dir (e.g. "stop", "kafka", "--keep-data")."""
        return subprocess.run(
            [sys.executable, str(ENGINES_PY), *args, "--state-dir", str(self.state_dir)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def reload(self) -> Engines:
        return load_engines(self.state_dir)


def load_engines(state_dir: Path) -> Engines:
    state = json.loads((state_dir / "engines.json").read_text())["engines"]
    env: dict[str, str] = {}
    for handle in state.values():
        env.update(handle["env"])
    return Engines(state_dir=state_dir, env=env, state=state)
