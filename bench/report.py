"""The output of every benchmark: rows of named numbers, one column per load setting (e.g.
`c=1`, `c=50`), with an optional target checked against one column (or all), rendered as a
plain-text table for the terminal or as a Markdown table for docs/benchmarks.md."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

Comparison = Literal["<=", "=="]


class Verdict(enum.Enum):
    """The result of checking a row against its target."""

    NONE = ""  # the row has no target
    PASS = "PASS"
    FAIL = "FAIL"
    MISSING = "n/a"  # the column the target applies to has no value


@dataclass(frozen=True, slots=True)
class Target:
    """A limit on a row's value: in one column, or in every column when `column` is None."""

    limit: float
    column: str | None = None
    op: Comparison = "<="

    def holds(self, value: float) -> bool:
        """Whether `value` meets the target."""
        return value <= self.limit if self.op == "<=" else value == self.limit

    def describe(self) -> str:
        """E.g. `<= 3 at c=1`, or `== 0` for every column."""
        limit = f"{self.limit:g}"
        return f"{self.op} {limit}" + (f" at {self.column}" if self.column else "")


@dataclass(frozen=True, slots=True)
class Row:
    """One measured quantity of one benchmark, by column."""

    bench: str
    metric: str
    unit: str
    values: Mapping[str, float | None]
    target: Target | None = None
    precision: int = 2

    def verdict(self) -> Verdict:
        """PASS/FAIL against the target (NONE without one, MISSING without the value)."""
        if self.target is None:
            return Verdict.NONE
        columns = [self.target.column] if self.target.column else list(self.values)
        values = [self.values.get(c) for c in columns]
        if not values or any(v is None for v in values):
            return Verdict.MISSING
        ok = all(self.target.holds(v) for v in values if v is not None)
        return Verdict.PASS if ok else Verdict.FAIL

    def formatted(self, column: str) -> str:
        """The value of a column as text (`-` when absent)."""
        value = self.values.get(column)
        if value is None:
            return "-"
        return f"{value:.{self.precision}f}"


@dataclass(frozen=True, slots=True)
class Section:
    """The rows of one benchmark with its title and notes printed under the table."""

    name: str
    title: str
    rows: Sequence[Row]
    notes: Sequence[str] = field(default_factory=tuple)

    @property
    def columns(self) -> list[str]:
        """Value columns in order of first appearance."""
        seen: dict[str, None] = {}
        for row in self.rows:
            for column in row.values:
                seen.setdefault(column, None)
        return list(seen)


def _cells(section: Section) -> tuple[list[str], list[list[str]]]:
    header = ["metric", "unit", *section.columns, "target", "result"]
    body = [
        [
            row.metric,
            row.unit,
            *(row.formatted(c) for c in section.columns),
            row.target.describe() if row.target else "",
            row.verdict().value,
        ]
        for row in section.rows
    ]
    return header, body


def _line(cells: Sequence[str], widths: Sequence[int], numeric: set[int]) -> str:
    return "  ".join(
        c.rjust(w) if i in numeric else c.ljust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    ).rstrip()


def render_text(sections: Sequence[Section], preamble: Sequence[str] = ()) -> str:
    """Aligned plain-text tables, one per section, and a one-line summary of the targets."""
    lines = [*preamble]
    for section in sections:
        header, body = _cells(section)
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        numeric = set(range(2, 2 + len(section.columns)))

        lines += ["", f"== {section.title} =="]
        lines += [
            _line(cells, widths, numeric) for cells in [header, ["-" * w for w in widths], *body]
        ]
        lines += [f"  * {note}" for note in section.notes]
    lines += ["", summary(sections)]
    return "\n".join(lines) + "\n"


def render_markdown(sections: Sequence[Section], preamble: Sequence[str] = ()) -> str:
    """Markdown tables, one per section, and the summary of the targets."""
    lines = [*preamble]
    for section in sections:
        header, body = _cells(section)
        aligns = ["---", "---", *("---:" for _ in section.columns), "---", "---"]
        lines += ["", f"### {section.title}", ""]
        lines += ["| " + " | ".join(cells) + " |" for cells in [header, aligns, *body]]
        if section.notes:
            lines.append("")
            lines += [f"- {note}" for note in section.notes]
    lines += ["", summary(sections)]
    return "\n".join(lines) + "\n"


def summary(sections: Sequence[Section]) -> str:
    """E.g. `targets: 3 passed, 1 failed (streaming: per-token relay lag p99)`."""
    verdicts = [(s, r, r.verdict()) for s in sections for r in s.rows]
    passed = sum(v is Verdict.PASS for _, _, v in verdicts)
    failed = [f"{s.name}: {r.metric}" for s, r, v in verdicts if v is Verdict.FAIL]
    missing = [f"{s.name}: {r.metric}" for s, r, v in verdicts if v is Verdict.MISSING]
    text = f"targets: {passed} passed, {len(failed)} failed"
    if failed:
        text += f" ({'; '.join(failed)})"
    if missing:
        text += f", {len(missing)} not measured ({'; '.join(missing)})"
    return text


def failed(sections: Sequence[Section]) -> bool:
    """Whether any target was missed (or could not be measured)."""
    return any(r.verdict() in (Verdict.FAIL, Verdict.MISSING) for s in sections for r in s.rows)
