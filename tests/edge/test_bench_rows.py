"""The edge benchmark's table from known samples: the lag Envoy adds is the path's percentile
minus the direct gRPC one, and broken streams are counted per path."""

from __future__ import annotations

from bench.edge import DIRECT, PATHS, SSE, SSE_HTTPX, PathResult, rows
from bench.streaming import TurnResult


def _turn(first_lag_ms: float, lag_ms: float, *, failed: bool = False) -> TurnResult:
    turn = TurnResult(sent_ns=0, first_lag_ns=int(first_lag_ms * 1e6))
    turn.lags_ns = [int(lag_ms * 1e6)] * 3
    turn.error = "cut" if failed else None
    return turn


def test_rows_subtract_the_direct_path() -> None:
    base = {
        DIRECT: 1.0,
        "gRPC via Envoy": 1.4,
        "gRPC-Web via Envoy": 1.5,
        SSE: 2.5,
        SSE_HTTPX: 3.0,
    }
    results = {
        "c=1": {path: PathResult(turns=[_turn(base[path], base[path] / 2)]) for path in PATHS}
    }
    results["c=1"][SSE].turns.append(_turn(2.5, 1.25, failed=True))
    table = {row.metric: row for row in rows(results)}
    added = table["  added by Envoy, TTFT lag p50: gRPC via Envoy"]
    assert round(added.values["c=1"] or 0, 3) == 0.4
    assert added.verdict().value == "PASS"
    assert table["  added by Envoy, TTFT lag p50: SSE via Envoy"].verdict().value == "FAIL"
    per_token = table["  added by Envoy, per-token lag p50: gRPC-Web via Envoy"]
    assert round(per_token.values["c=1"] or 0, 3) == 0.25
    # The httpx reading of SSE is shown beside the lean one, without a target of its own.
    httpx_added = table[f"  added by Envoy, TTFT lag p50: {SSE_HTTPX}"]
    assert round(httpx_added.values["c=1"] or 0, 3) == 2.0
    assert httpx_added.target is None
    assert table[f"{SSE}: streams failed / contract violations"].values["c=1"] == 1
    assert table[f"{DIRECT}: streams failed / contract violations"].values["c=1"] == 0
