"""Where a turn's time goes, from the spans the services wrote to files.

Run a benchmark with file tracing and its data kept, then point this at the kept directory:

    python -m bench --only llm-chain --keep-data --env CHATPLANE_TRACE_EXPORTER=file
    python -m bench.trace_timeline /tmp/chatplane-bench-llm-chain-XXXX

Every `GatewayService/Chat` span is a turn. Only turns that ran alone (no other turn's Chat
span open when it began) are summarised, so the figures are the single-stream path, not
queueing behind other turns. For each span name in those turns it prints the median start
offset from the turn's start and the median duration (milliseconds), in start order, and
the median offset of the model's first token (`gen_ai.first_token` event). Tracing itself
adds to every span (docs/benchmarks.md, "Tracing"), so read the figures as proportions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

CHAT_SPAN = "/chatplane.v1.GatewayService/Chat"
FIRST_TOKEN_EVENT = "gen_ai.first_token"


def _ms(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp() * 1000


@dataclass
class Step:
    """One span name's samples across the turns: (start offset, duration) in ms."""

    samples: list[tuple[float, float]] = field(default_factory=list)
    first_token: list[float] = field(default_factory=list)


def read_spans(directory: Path) -> list[dict[str, Any]]:
    """Every span of every `*.jsonl` under `directory`."""
    spans = []
    for path in sorted(directory.rglob("*.jsonl")):
        with path.open(encoding="utf-8") as lines:
            spans += [json.loads(line) for line in lines if line.strip()]
    return spans


def solo_turns(spans: Iterable[dict[str, Any]]) -> dict[str, tuple[float, list[dict[str, Any]]]]:
    """trace id -> (turn start ms, its spans) for the turns that began with no other turn open."""
    by_trace: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for span in spans:
        by_trace[span["context"]["trace_id"]].append(span)
    chats = [
        (_ms(s["start_time"]), _ms(s["end_time"]), trace)
        for trace, trace_spans in by_trace.items()
        for s in trace_spans
        if s["name"] == CHAT_SPAN
    ]
    return {
        trace: (start, by_trace[trace])
        for start, _, trace in chats
        if sum(1 for other in chats if other[0] <= start <= other[1]) == 1
    }


def timeline(turns: dict[str, tuple[float, list[dict[str, Any]]]]) -> dict[str, Step]:
    """Span label ("service: name") -> its samples, over the given turns."""
    steps: dict[str, Step] = defaultdict(Step)
    for start, spans in turns.values():
        for span in spans:
            service = span["resource"]["attributes"].get("service.name", "?")
            step = steps[f"{service.removeprefix('chatplane-')}: {span['name']}"]
            began = _ms(span["start_time"])
            step.samples.append((began - start, _ms(span["end_time"]) - began))
            step.first_token += [
                _ms(e["timestamp"]) - start
                for e in span.get("events", [])
                if e["name"] == FIRST_TOKEN_EVENT
            ]
    return steps


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trace_timeline", description=__doc__)
    parser.add_argument("directory", type=Path, help="a kept benchmark data dir (or traces/)")
    arguments = parser.parse_args(argv)
    turns = solo_turns(read_spans(arguments.directory))
    if not turns:
        print("no turn ran alone in these traces", file=sys.stderr)
        return 1
    steps = timeline(turns)
    print(f"{len(turns)} turns that ran alone; medians in ms from the turn's start")
    print(f"{'span':72s} {'n':>4s} {'start':>9s} {'duration':>9s} {'first token':>12s}")
    ordered = sorted(steps.items(), key=lambda kv: statistics.median(s for s, _ in kv[1].samples))
    for label, step in ordered:
        first = f"{statistics.median(step.first_token):12.2f}" if step.first_token else ""
        print(
            f"{label[:72]:72s} {len(step.samples):4d}"
            f" {statistics.median(s for s, _ in step.samples):9.2f}"
            f" {statistics.median(d for _, d in step.samples):9.2f} {first}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
