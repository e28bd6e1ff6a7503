"""Side by side with the code before a change: `python -m bench --baseline REF` runs each
selected benchmark first on a checkout of REF (its own bench/ and services/, in a throwaway git
worktree, through its `--markdown` report), then on the working tree, and prints one table
per benchmark whose columns pair the two (`c=1 REF`, `c=1`). Targets are checked on the
working tree's columns only."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.report import Row, Section, Target

REPO = Path(__file__).resolve().parents[1]
# A baseline benchmark runs at most this long (the longest registered ones take ~15 min).
BASELINE_TIMEOUT_SECONDS = 3600.0

# One measured figure of the baseline: (benchmark title, metric) -> {column: value}.
BaselineFigures = Mapping[tuple[str, str], Mapping[str, float | None]]


class BaselineError(RuntimeError):
    """The baseline checkout could not be made or its benchmark did not run."""


@dataclass(frozen=True, slots=True)
class Checkout:
    """A throwaway worktree of one commit, runnable with this virtualenv's interpreter."""

    ref: str
    commit: str
    path: Path

    def environment(self, extra: Mapping[str, str]) -> dict[str, str]:
        """The checkout's own services/ and gen/python ahead of this tree's on the path (the
        .pth file of `make venv` points at the working tree: PYTHONPATH comes first)."""
        paths = [self.path / "services", self.path / "gen" / "python", self.path]
        return {
            **os.environ,
            **extra,
            "PYTHONPATH": os.pathsep.join(str(p) for p in paths),
        }


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise BaselineError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


@contextlib.contextmanager
def checkout(ref: str) -> Iterator[Checkout]:
    """A detached worktree of `ref`, removed afterwards."""
    commit = _git("rev-parse", "--verify", f"{ref}^{{commit}}")
    with tempfile.TemporaryDirectory(prefix="chatplane-baseline-") as parent:
        path = Path(parent) / "tree"
        _git("worktree", "add", "--detach", str(path), commit)
        try:
            yield Checkout(ref=ref, commit=commit[:12], path=path)
        finally:
            _git("worktree", "remove", "--force", str(path))


def run_baseline(
    tree: Checkout, name: str, *, quick: bool, env: Mapping[str, str]
) -> BaselineFigures:
    """The figures of one benchmark as the baseline's own `python -m bench` reports them."""
    command = [sys.executable, "-m", "bench", "--only", name, "--markdown", "--quiet"]
    if quick:
        command.append("--quick")
    for key, value in env.items():
        command += ["--env", f"{key}={value}"]
    done = subprocess.run(
        command,
        cwd=tree.path,
        env=tree.environment({}),
        capture_output=True,
        text=True,
        timeout=BASELINE_TIMEOUT_SECONDS,
        check=False,
    )
    if done.returncode not in (0, 1):
        raise BaselineError(
            f"baseline {tree.ref} ({tree.commit}) benchmark {name} exited {done.returncode}:"
            f" {done.stderr.strip()[-2000:]}"
        )
    return parse_markdown(done.stdout)


_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


def parse_markdown(report: str) -> BaselineFigures:
    """The figures of a `--markdown` report: each `### title` table's rows by metric, the
    value columns between `unit` and `target`."""
    figures: dict[tuple[str, str], dict[str, float | None]] = {}
    title = ""
    header: list[str] = []
    for line in report.splitlines():
        if line.startswith("### "):
            title, header = line[4:].strip(), []
            continue
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not header:
            header = cells
            continue
        if all(set(cell) <= set("-:") for cell in cells):
            continue
        columns = header[2:-2]
        values = cells[2 : 2 + len(columns)]
        # "-" is a column the row has no value in: left out, as the row had it.
        figures[(title, cells[0])] = {
            column: float(value)
            for column, value in zip(columns, values, strict=True)
            if _NUMBER.match(value)
        }
    return figures


def side_by_side(section: Section, baseline: BaselineFigures, label: str) -> Section:
    """`section` with each value column preceded by the baseline's (`<column> <label>`); a
    row the baseline did not have gets `-` there. Targets stay on the current columns."""
    rows: list[Row] = []
    for row in section.rows:
        before = baseline.get((section.title, row.metric), {})
        values: dict[str, float | None] = {}
        for column in (c for c in section.columns if c in row.values):
            values[f"{column} {label}"] = before.get(column)
            values[column] = row.values.get(column)
        rows.append(Row(row.bench, row.metric, row.unit, values, _on_current(row), row.precision))
    return Section(section.name, section.title, rows, section.notes)


def _on_current(row: Row) -> Target | None:
    """The row's target, pinned to a current column: a target of every column would also
    judge the baseline's. The first current column that misses it decides (else any)."""
    target = row.target
    if target is None or target.column is not None or not row.values:
        return target
    missing = [c for c, v in row.values.items() if v is None or not target.holds(v)]
    return Target(target.limit, missing[0] if missing else next(iter(row.values)), target.op)


def label_of(tree: Checkout) -> str:
    """The column suffix of the baseline's values."""
    return f"@{tree.commit[:7]}"


def describe(tree: Checkout) -> str:
    """The preamble line naming the baseline."""
    return f"baseline: {tree.ref} = {tree.commit} (its columns are marked {label_of(tree)})"
