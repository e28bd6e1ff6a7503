"""The side-by-side report of `python -m bench --baseline REF`: the baseline's Markdown read
back, paired columns, targets judged on the working tree's columns only."""

from __future__ import annotations

from pathlib import Path

from bench import baseline
from bench.report import Row, Section, Target, Verdict, render_markdown


def _section(values: dict[str, float | None], target: Target | None) -> Section:
    rows = [
        Row("chain", "time to first token p50", "ms", values, target),
        Row("chain", "streams held", "count", {"ramp": 10.0}, None, precision=0),
    ]
    return Section("chain", "LLM chain", rows, ("a note",))


def test_a_markdown_report_reads_back_into_its_figures() -> None:
    report = render_markdown([_section({"c=1": 12.5, "c=50": None}, None)], ["preamble"])

    figures = baseline.parse_markdown(report)

    # A value that was not measured ("-") is left out, as in the row that was rendered.
    assert figures[("LLM chain", "time to first token p50")] == {"c=1": 12.5}
    assert figures[("LLM chain", "streams held")] == {"ramp": 10.0}


def test_columns_pair_the_baseline_with_the_working_tree() -> None:
    before = {("LLM chain", "time to first token p50"): {"c=1": 30.0, "c=50": 60.0}}

    paired = baseline.side_by_side(
        _section({"c=1": 10.0, "c=50": 20.0}, Target(15.0, "c=1")), before, "@abc1234"
    )

    assert paired.columns == [
        "c=1 @abc1234",
        "c=1",
        "c=50 @abc1234",
        "c=50",
        "ramp @abc1234",
        "ramp",
    ]
    first = paired.rows[0]
    assert first.values == {"c=1 @abc1234": 30.0, "c=1": 10.0, "c=50 @abc1234": 60.0, "c=50": 20.0}
    assert first.verdict() is Verdict.PASS
    # A row the baseline did not report has no baseline value.
    assert paired.rows[1].values["ramp @abc1234"] is None


def test_a_target_of_every_column_ignores_the_baseline_columns() -> None:
    before = {("LLM chain", "time to first token p50"): {"c=1": 900.0, "c=50": 900.0}}
    passing = _section({"c=1": 10.0, "c=50": 20.0}, Target(25.0))
    failing = _section({"c=1": 10.0, "c=50": 30.0}, Target(25.0))

    assert baseline.side_by_side(passing, before, "@b").rows[0].verdict() is Verdict.PASS
    assert baseline.side_by_side(failing, before, "@b").rows[0].verdict() is Verdict.FAIL


def test_a_checkout_is_the_commit_and_goes_away() -> None:
    with baseline.checkout("HEAD") as tree:
        path = tree.path
        assert (path / "bench" / "__main__.py").is_file()
        assert tree.environment({})["PYTHONPATH"].split(":")[0] == str(path / "services")
    assert not Path(path).exists()
