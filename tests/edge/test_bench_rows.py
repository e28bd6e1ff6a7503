"""The edge benchmark's table from known samples: the lag Envoy adds is the path's percentile
minus the direct gRPC one, and broken streams are counted per path."""

from __future__ import annotations

from bench.edge import DIRECT, PATHS, PathResult, rows
from bench.streaming import TurnResult


def _turn(first_lag_ms: float, lag_ms: float, *, failed: bool = False) -> TurnResult:
    turn = TurnResult(sent_ns=0, first_lag_ns=int(first_lag_ms * 1e6))
    turn.lags_ns = [int(lag_ms * 1e6)] * 3
    turn.error = "cut" if failed else None
    return turn


def test_rows_subtract_the_direct_path() -> None:
    base = {DIRECT: 1.0, "gRPC via Envoy": 1.4, "gRPC-Web via Envoy": 1.5, "SSE via Envoy": 2.5}
    results = {
        "c=1": {path: PathResult(turns=[_turn(base[path], base[path] / 2)]) for path in PATHS}
    }
    results["c=1"]["SSE via Envoy"].turns.append(_turn(2.5, 1.25, failed=True))
    table = {row.metric: row for row in rows(results)}
    added = table["  added by Envoy, TTFT lag p50: gRPC via Envoy"]
    assert round(added.values["c=1"] or 0, 3) == 0.4
    assert added.verdict().value == "PASS"
    assert table["  added by Envoy, TTFT lag p50: SSE via Envoy"].verdict().value == "FAIL"
    per_token = table["  added by Envoy, per-token lag p50: gRPC-Web via Envoy"]
    assert round(per_token.values["c=1"] or 0, 3) == 0.25
    assert table["SSE via Envoy: streams failed / contract violations"].values["c=1"] == 1
    assert table[f"{DIRECT}: streams failed / contract violations"].values["c=1"] == 0
