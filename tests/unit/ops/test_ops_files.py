"""ops/: the Prometheus alerting rules and the Grafana dashboard are well-formed (the live
test in tests/integration/test_observability.py checks their metrics exist)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.ops_queries import (
    RULES,
    dashboard,
    metric_names,
    panel_expressions,
    recorded_names,
    rule_expressions,
    rules,
)

ALERTS = {
    "ChatplaneErrorBudgetBurnFast",
    "ChatplaneErrorBudgetBurnSlow",
    "ChatplaneTimeToFirstTokenHigh",
    "ChatplaneConsumerLagGrowing",
    "ChatplaneRejectionsSpike",
    "ChatplaneEventLoopSaturated",
    "ChatplaneMessageLogAppendSlow",
    "ChatplaneCircuitOpen",
}


def _balanced(expr: str) -> bool:
    depth = 0
    for char in expr:
        depth += {"(": 1, ")": -1, "{": 1, "}": -1, "[": 1, "]": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def test_every_rule_is_complete() -> None:
    groups = rules()["groups"]
    alerts = [r for g in groups for r in g["rules"] if "alert" in r]
    assert {a["alert"] for a in alerts} == ALERTS
    for alert in alerts:
        assert alert["labels"]["severity"] in ("page", "ticket"), alert["alert"]
        assert alert["annotations"]["summary"], alert["alert"]
        assert alert["for"], alert["alert"]
    recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    # Every recording rule used is defined here.
    assert recorded_names(rule_expressions() + panel_expressions()) <= recorded
    for expr in rule_expressions():
        assert _balanced(expr), expr


def test_the_dashboard_is_a_grafana_dashboard_on_a_datasource_variable() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    rows = [p["title"] for p in panels if p["type"] == "row"]
    for needed in ("Traffic", "Errors", "Latency", "Saturation"):
        assert needed in rows
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["refId"] and _balanced(target["expr"]), target


def test_rules_and_panels_cover_the_issues_signals() -> None:
    used = metric_names(rule_expressions() + panel_expressions())
    for name in (
        "chatplane_rpc_server_duration_seconds_count",
        "chatplane_gateway_time_to_first_token_seconds_bucket",
        "chatplane_agent_tokens_total",
        "chatplane_log_consumer_lag_records",
        "chatplane_gateway_rejections_total",
        "chatplane_event_loop_lag_seconds_bucket",
    ):
        assert name in used


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_rules() -> None:
    result = subprocess.run(
        ["promtool", "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
