"""Fixtures of the client tests: the Go client binary, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.clients.go_client import build


@pytest.fixture(scope="session")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("go-client"))
