"""bench.trace_timeline: which turns count as alone, and the medians it reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import trace_timeline


def _span(trace: str, service: str, name: str, start_ms: int, end_ms: int, **extra: Any) -> str:
    def stamp(ms: int) -> str:
        return f"2026-11-24T14:00:{ms // 1000:02d}.{ms % 1000:03d}000Z"

    return json.dumps(
        {
            "name": name,
            "context": {"trace_id": trace},
            "start_time": stamp(start_ms),
            "end_time": stamp(end_ms),
            "resource": {"attributes": {"service.name": f"chatplane-{service}"}},
            "events": [
                {"name": "gen_ai.first_token", "timestamp": stamp(t)}
                for t in extra.get("first_token", [])
            ],
        }
    )


def test_only_turns_that_ran_alone_are_summarised(tmp_path: Path, capsys: Any) -> None:
    chat = trace_timeline.CHAT_SPAN
    lines = [
        # Two turns alone (1 s and 3 s), two that overlap (5.0-5.9 s and 5.5-6.5 s).
        _span("a", "gateway", chat, 1000, 1900),
        _span("a", "agent", "recall", 1010, 1020),
        _span("a", "agent", "model", 1020, 1800, first_token=[1600]),
        _span("b", "gateway", chat, 3000, 3900),
        _span("b", "agent", "recall", 3020, 3050),
        _span("b", "agent", "model", 3050, 3800, first_token=[3700]),
        _span("c", "gateway", chat, 5000, 5900),
        _span("c", "agent", "recall", 5100, 5500),
        _span("d", "gateway", chat, 5500, 6500),
    ]
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "all.jsonl").write_text("\n".join(lines) + "\n")

    turns = trace_timeline.solo_turns(trace_timeline.read_spans(tmp_path))
    assert set(turns) == {"a", "b", "c"}  # c began while nothing else was open; d did not
    steps = trace_timeline.timeline({k: v for k, v in turns.items() if k != "c"})
    recall = steps["agent: recall"]
    assert sorted(recall.samples) == [
        pytest.approx((10.0, 10.0)),
        pytest.approx((20.0, 30.0)),
    ]
    assert sorted(steps["agent: model"].first_token) == [pytest.approx(600.0), pytest.approx(700.0)]

    assert trace_timeline.main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith("3 turns that ran alone")
    assert "agent: model" in printed


def test_no_solo_turn_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text("")
    assert trace_timeline.main([str(tmp_path)]) == 1
