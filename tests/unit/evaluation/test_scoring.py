"""The evaluation harness's scoring and gate (docs/eval.md), and suite validation: a case
passes only with every fact, every required citation and no forbidden text; the gate fails a
candidate that regresses a case, drops the pass rate, slows down or costs more beyond the
tolerances; the starter suite in the repo is valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatplane.evaluation.scoring import (
    Answer,
    gate_against,
    gate_alone,
    score_case,
    summarize,
)
from chatplane.evaluation.suite import SuiteCase, SuiteError, Tolerances, load_suite

ROOT = Path(__file__).resolve().parents[3]
PRICES = {"claude-haiku-4-5": (1.0, 5.0)}
CASE = SuiteCase(
    id="refund",
    question="How long?",
    expected_facts=["30 days", "receipt"],
    required_citations=["refunds.md"],
    forbidden=["90 days"],
)


def _answer(text: str, citations: tuple[str, ...] = ("refunds.md",), **kw: object) -> Answer:
    fields: dict[str, object] = {
        "variant": "rag@1",
        "model": "claude-haiku-4-5",
        "completed": True,
        "first_token_ms": 50.0,
        "total_ms": 100.0,
        "input_tokens": 1000,
        "output_tokens": 200,
    }
    fields.update(kw)
    return Answer(text=text, citations=citations, **fields)  # type: ignore[arg-type]


def test_a_case_passes_with_every_fact_citation_and_nothing_forbidden() -> None:
    good = score_case(CASE, _answer("Within 30  DAYS, with the Receipt."), PRICES)
    assert good.passed and good.facts_found == 2
    assert good.cost_usd == pytest.approx((1000 * 1.0 + 200 * 5.0) / 1e6) and good.priced
    missing = score_case(CASE, _answer("Within 30 days.", ()), PRICES)
    assert not missing.passed
    assert missing.missing_facts == ["receipt"] and missing.missing_citations == ["refunds.md"]
    forbidden = score_case(CASE, _answer("30 days or 90 days, receipt"), PRICES)
    assert forbidden.forbidden_found == ["90 days"] and not forbidden.passed
    cut = score_case(CASE, _answer("30 days, receipt", completed=False), PRICES)
    assert not cut.passed
    unpriced = score_case(CASE, _answer("30 days receipt", model="other"), PRICES)
    assert unpriced.passed and not unpriced.priced and unpriced.cost_usd == 0


def test_the_gate_against_a_baseline() -> None:
    baseline = [score_case(CASE, _answer("30 days, receipt"), PRICES)]
    same = [score_case(CASE, _answer("30 days, receipt"), PRICES)]
    assert gate_against(same, baseline, Tolerances()).passed
    dropped = [score_case(CASE, _answer("30 days, receipt", ()), PRICES)]
    verdict = gate_against(dropped, baseline, Tolerances())
    assert not verdict.passed and verdict.regressed_cases == ["refund"]
    assert gate_against(dropped, baseline, Tolerances(max_regressed_cases=1, pass_rate_drop=1))
    slow = [score_case(CASE, _answer("30 days, receipt", total_ms=250.0), PRICES)]
    assert not gate_against(slow, baseline, Tolerances(latency_increase=1.0)).passed
    assert gate_against(slow, baseline, Tolerances(latency_increase=2.0)).passed
    dear = [score_case(CASE, _answer("30 days, receipt", output_tokens=400), PRICES)]
    assert not gate_against(dear, baseline, Tolerances(cost_increase=0.25)).passed
    alone = summarize("rag@2", dropped)
    assert not gate_alone(alone, Tolerances()).passed
    assert gate_alone(alone, Tolerances(min_pass_rate=0)).passed


def test_the_starter_suite_is_valid(tmp_path: Path) -> None:
    suite, contents = load_suite(ROOT / "eval" / "suites" / "starter.yaml")
    assert {c.id for c in suite.cases} >= {"refund-window", "canada-carrier"}
    assert set(contents) == {"refunds.md", "shipping.md"}
    bad = {
        "name: s\ncases: []": "cases",
        "name: s\ncases: [{id: a, question: q}, {id: a, question: r}]": "twice",
        "name: s\ncases: [{id: a, question: q, surprise: 1}]": "surprise",
        "name: s\ndocuments: [{name: d}]\ncases: [{id: a, question: q}]": "exactly one",
        "name: s\ndocuments: [{name: d, path: nowhere.md}]\ncases: [{id: a, question: q}]": (
            "cannot read"
        ),
    }
    for text, words in bad.items():
        path = tmp_path / "suite.yaml"
        path.write_text(text)
        with pytest.raises(SuiteError, match=words):
            load_suite(path)
