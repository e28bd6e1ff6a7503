"""Import layering, checked in a fresh interpreter: the leaf modules everything uses import
nothing else of chatplane, and the audit chain does not import the persistence store."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _loaded_by(*modules: str) -> set[str]:
    """The chatplane modules a fresh interpreter has loaded after importing `modules`."""
    code = (
        "import json, sys\n"
        + "".join(f"import {module}\n" for module in modules)
        + "print(json.dumps(sorted(m for m in sys.modules if m.startswith('chatplane'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(result.stdout))


@pytest.mark.parametrize(
    "leaf", ["chatplane.common.timestamps", "chatplane.common.topics", "chatplane.common.errors"]
)
def test_a_leaf_module_imports_nothing_else_of_chatplane(leaf: str) -> None:
    assert _loaded_by(leaf) <= {"chatplane", "chatplane.common", leaf}


def test_the_audit_chain_does_not_import_the_store() -> None:
    loaded = _loaded_by(
        "chatplane.audit",
        "chatplane.audit.chain",
        "chatplane.audit.protos",
        "chatplane.audit.recorder",
        "chatplane.audit.outcome",
    )
    assert "chatplane.audit.chain" in loaded
    assert not {m for m in loaded if m.startswith("chatplane.persistence")}
