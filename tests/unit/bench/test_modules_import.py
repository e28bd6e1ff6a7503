"""Every benchmark module imports (`make bench` loads them all through bench/__main__.py, and
mypy --strict checks only services/, so a renamed service class would otherwise surface only
when someone runs the benchmarks)."""

from __future__ import annotations

import importlib
import pkgutil

import bench


def test_every_benchmark_module_imports_and_is_registered() -> None:
    names = sorted(m.name for m in pkgutil.iter_modules(bench.__path__))
    assert "llm_chain" in names and "__main__" in names
    for name in names:
        importlib.import_module(f"bench.{name}")
    registry = importlib.import_module("bench.__main__")
    registered = {b.name for b in registry.BENCHMARKS}
    assert {"llm-chain", "export", "erasure", "registry", "encryption", "embedding"} <= registered
