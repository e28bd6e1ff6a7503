"""Scores of one evaluated answer and of a whole run (docs/eval.md), and the comparison of a
candidate with a baseline under the suite's tolerances. Plain functions, no gRPC."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from chatplane.evaluation.suite import SuiteCase, Tolerances


def _normal(text: str) -> str:
    return " ".join(text.casefold().split())


@dataclass(frozen=True, slots=True)
class Answer:
    """What the Agent path produced for a case's question."""

    text: str
    citations: tuple[str, ...]  # document names and ids of the answer's citations
    variant: str  # the variant the answer recorded
    model: str
    completed: bool
    first_token_ms: float | None
    total_ms: float
    input_tokens: int
    output_tokens: int
    error: str = ""


@dataclass(frozen=True, slots=True)
class CaseScore:
    """One case's score."""

    case: str
    passed: bool
    facts_found: int
    facts_expected: int
    missing_facts: list[str]
    missing_citations: list[str]
    forbidden_found: list[str]
    variant: str
    model: str
    first_token_ms: float | None
    total_ms: float
    input_tokens: int
    output_tokens: int
    cost_usd: float
    priced: bool
    error: str
    answer: str


def cost_usd(
    model: str, input_tokens: int, output_tokens: int, prices: Mapping[str, tuple[float, float]]
) -> tuple[float, bool]:
    """The answer's cost from the price table (US dollars per million tokens), and whether
    the model was in it."""
    price = prices.get(model)
    if price is None:
        return 0.0, False
    return (input_tokens * price[0] + output_tokens * price[1]) / 1_000_000, True


def score_case(
    case: SuiteCase, answer: Answer, prices: Mapping[str, tuple[float, float]]
) -> CaseScore:
    """Facts present, citations retrieved, forbidden content absent, and the answer ended."""
    text = _normal(answer.text)
    missing_facts = [f for f in case.expected_facts if _normal(f) not in text]
    cited = {_normal(c) for c in answer.citations}
    missing_citations = [c for c in case.required_citations if _normal(c) not in cited]
    forbidden_found = [f for f in case.forbidden if _normal(f) in text]
    cost, priced = cost_usd(answer.model, answer.input_tokens, answer.output_tokens, prices)
    return CaseScore(
        case=case.id,
        passed=answer.completed
        and not answer.error
        and not missing_facts
        and not missing_citations
        and not forbidden_found,
        facts_found=len(case.expected_facts) - len(missing_facts),
        facts_expected=len(case.expected_facts),
        missing_facts=missing_facts,
        missing_citations=missing_citations,
        forbidden_found=forbidden_found,
        variant=answer.variant,
        model=answer.model,
        first_token_ms=answer.first_token_ms,
        total_ms=answer.total_ms,
        input_tokens=answer.input_tokens,
        output_tokens=answer.output_tokens,
        cost_usd=cost,
        priced=priced,
        error=answer.error,
        answer=answer.text,
    )


@dataclass(frozen=True, slots=True)
class RunSummary:
    """A variant's run over the suite."""

    variant: str
    cases: int
    passed: int
    pass_rate: float
    fact_recall: float | None
    citation_cases_passed: int
    forbidden_violations: int
    mean_first_token_ms: float | None
    mean_total_ms: float
    input_tokens: int
    output_tokens: int
    cost_usd: float
    unpriced_models: list[str]


def summarize(variant: str, scores: Sequence[CaseScore]) -> RunSummary:
    """Totals and means of a run."""
    facts_expected = sum(s.facts_expected for s in scores)
    first = [s.first_token_ms for s in scores if s.first_token_ms is not None]
    passed = sum(s.passed for s in scores)
    return RunSummary(
        variant=variant,
        cases=len(scores),
        passed=passed,
        pass_rate=passed / len(scores) if scores else 0.0,
        fact_recall=(
            sum(s.facts_found for s in scores) / facts_expected if facts_expected else None
        ),
        citation_cases_passed=sum(not s.missing_citations for s in scores),
        forbidden_violations=sum(len(s.forbidden_found) for s in scores),
        mean_first_token_ms=statistics.fmean(first) if first else None,
        mean_total_ms=statistics.fmean(s.total_ms for s in scores) if scores else 0.0,
        input_tokens=sum(s.input_tokens for s in scores),
        output_tokens=sum(s.output_tokens for s in scores),
        cost_usd=sum(s.cost_usd for s in scores),
        unpriced_models=sorted({s.model for s in scores if not s.priced and s.model}),
    )


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether the candidate passes the gate, and why not."""

    passed: bool
    reasons: list[str] = field(default_factory=list)
    regressed_cases: list[str] = field(default_factory=list)


def gate_alone(summary: RunSummary, tolerances: Tolerances) -> Verdict:
    """Without a baseline: enough cases must pass."""
    if summary.pass_rate + 1e-9 < tolerances.min_pass_rate:
        return Verdict(
            False,
            [f"pass rate {summary.pass_rate:.0%} is below {tolerances.min_pass_rate:.0%}"],
        )
    return Verdict(True)


def gate_against(
    candidate: Sequence[CaseScore],
    baseline: Sequence[CaseScore],
    tolerances: Tolerances,
) -> Verdict:
    """With a baseline: no more regressed cases, pass-rate drop, slowdown or extra cost than
    the tolerances allow."""
    ran, base = summarize("candidate", candidate), summarize("baseline", baseline)
    before = {s.case: s.passed for s in baseline}
    regressed = [s.case for s in candidate if before.get(s.case) and not s.passed]
    reasons: list[str] = []
    if len(regressed) > tolerances.max_regressed_cases:
        reasons.append(
            f"{len(regressed)} case(s) pass on the baseline and fail on the candidate: "
            + ", ".join(regressed)
        )
    if ran.pass_rate + 1e-9 < base.pass_rate - tolerances.pass_rate_drop:
        reasons.append(
            f"pass rate {ran.pass_rate:.0%} vs {base.pass_rate:.0%} on the baseline"
            f" (tolerance {tolerances.pass_rate_drop:.0%})"
        )
    if ran.mean_total_ms > base.mean_total_ms * (1 + tolerances.latency_increase):
        reasons.append(
            f"mean answer time {ran.mean_total_ms:.0f} ms vs {base.mean_total_ms:.0f} ms"
            f" (tolerance +{tolerances.latency_increase:.0%})"
        )
    if ran.cost_usd > base.cost_usd * (1 + tolerances.cost_increase) + 1e-9:
        reasons.append(
            f"cost ${ran.cost_usd:.6f} vs ${base.cost_usd:.6f}"
            f" (tolerance +{tolerances.cost_increase:.0%})"
        )
    return Verdict(not reasons, reasons, regressed)


def as_json(value: Any) -> Any:
    """A dataclass (or list of them) as JSON-ready data."""
    if isinstance(value, list):
        return [as_json(item) for item in value]
    return asdict(value)
