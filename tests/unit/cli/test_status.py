"""`chatplane status`'s arithmetic: Prometheus' histogram_quantile and interval deltas."""

from __future__ import annotations

import math

from rich.console import Console

from chatplane.cli.status import ServiceStatus, delta, histogram_quantile, parse_exposition, render

EXPOSITION = """\
# HELP chatplane_gateway_time_to_first_token_seconds TTFT
# TYPE chatplane_gateway_time_to_first_token_seconds histogram
chatplane_gateway_time_to_first_token_seconds_bucket{le="0.1",model="m"} 10.0
chatplane_gateway_time_to_first_token_seconds_bucket{le="0.2",model="m"} 90.0
chatplane_gateway_time_to_first_token_seconds_bucket{le="0.5",model="m"} 100.0
chatplane_gateway_time_to_first_token_seconds_bucket{le="+Inf",model="m"} 100.0
chatplane_gateway_time_to_first_token_seconds_count{model="m"} 100.0
chatplane_gateway_time_to_first_token_seconds_sum{model="m"} 17.0
# HELP chatplane_active_streams streams
# TYPE chatplane_active_streams gauge
chatplane_active_streams{method="GatewayService/Chat",service="gateway"} 3.0
"""


def test_quantiles_interpolate_inside_the_bucket_like_prometheus() -> None:
    buckets = [(0.1, 10.0), (0.2, 90.0), (0.5, 100.0), (math.inf, 100.0)]
    assert math.isclose(histogram_quantile(0.5, buckets), 0.15)
    assert math.isclose(histogram_quantile(0.99, buckets), 0.2 + 0.3 * 9 / 10)
    assert math.isclose(histogram_quantile(0.05, buckets), 0.05)


def test_a_rank_in_the_infinite_bucket_is_the_highest_finite_bound() -> None:
    assert histogram_quantile(0.99, [(0.1, 1.0), (math.inf, 10.0)]) == 0.1


def test_no_observations_is_nan() -> None:
    assert math.isnan(histogram_quantile(0.5, []))
    assert math.isnan(histogram_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]))


def test_delta_subtracts_cumulative_samples_and_keeps_gauges() -> None:
    now = parse_exposition(EXPOSITION)
    before = parse_exposition(EXPOSITION.replace(" 100.0", " 60.0"))
    changed = {(n, ls.get("le", "")): v for n, ls, v in delta(now, before)}
    count = "chatplane_gateway_time_to_first_token_seconds_count"
    assert changed[(count, "")] == 40.0
    assert changed[("chatplane_active_streams", "")] == 3.0


def test_the_watch_view_shows_rates_and_the_intervals_quantiles() -> None:
    rpcs = (
        "chatplane_rpc_server_duration_seconds_count"
        '{{code="{code}",method="{m}",service="gateway"}} {v}\n'
    )
    now = EXPOSITION + rpcs.format(code="OK", m="GatewayService/Chat", v=30.0)
    now += rpcs.format(code="UNAVAILABLE", m="GatewayService/Chat", v=4.0)
    now += rpcs.format(code="OK", m="Health/Check", v=500.0)
    before = EXPOSITION.replace(" 100.0", " 60.0") + rpcs.format(
        code="OK", m="GatewayService/Chat", v=10.0
    )
    windowed = delta(parse_exposition(now), parse_exposition(before))
    console = Console(record=True, width=120)
    console.print(render([ServiceStatus("gateway", "SERVING", "127.0.0.1:1", "", windowed)], 2.0))
    screen = console.export_text()
    assert "last 2 s" in screen
    # (30 - 10 OK + 4 UNAVAILABLE) / 2 s; health checks are not counted.
    assert "12.0/s" in screen
    row = next(line for line in screen.splitlines() if "gateway" in line)
    assert " 4 " in row  # errors in the interval
    # 40 TTFTs in the interval, all in (0.2, 0.5]: p50 = 0.2 + 0.3 * 20 / 40 = 350 ms.
    assert "TTFT p50 350 ms" in screen
