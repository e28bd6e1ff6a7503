"""The PromQL of ops/: every expression of the alerting rules and the Grafana dashboard, and
the metric names they use (read by the ops tests, static and live)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

OPS = Path(__file__).resolve().parent.parent / "ops"
RULES = OPS / "prometheus" / "chatplane-alerts.yaml"
DASHBOARD = OPS / "grafana" / "chatplane-dashboard.json"

# Metric names: ours, and the process_* metrics prometheus-client exports. Recording-rule
# names (with colons) are produced by the rules file itself.
_METRIC = re.compile(r"\b(?:chatplane_[a-z0-9_]+|process_[a-z_]+)\b")
_RECORDED = re.compile(r"\bchatplane:[a-z0-9_:]+\b")


def rules() -> dict[str, Any]:
    return yaml.safe_load(RULES.read_text())  # type: ignore[no-any-return]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def rule_expressions() -> list[str]:
    return [rule["expr"] for group in rules()["groups"] for rule in group["rules"]]


def panel_expressions() -> list[str]:
    return [
        target["expr"] for panel in dashboard()["panels"] for target in panel.get("targets", ())
    ]


def metric_names(expressions: list[str]) -> set[str]:
    """Sample names used by the expressions (a histogram's `_bucket` included)."""
    return {name for expr in expressions for name in _METRIC.findall(expr)}


def recorded_names(expressions: list[str]) -> set[str]:
    return {name for expr in expressions for name in _RECORDED.findall(expr)}
