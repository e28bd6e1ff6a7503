"""Fixtures of the client tests: the Go and the Node.js clients, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.clients.go_client import build
from tests.clients.ts_client import build as build_ts


@pytest.fixture(scope="session")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("go-client"))


@pytest.fixture(scope="session")
def ts_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_ts(tmp_path_factory.mktemp("ts-client"))
