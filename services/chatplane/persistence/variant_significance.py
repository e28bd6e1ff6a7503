"""Confidence intervals of each variant's thumbs-up rate (Wilson score) and mean rating
(Student t), and the comparison of every variant with a control (Fisher's exact test on the
thumbs, Welch's t test on the scores, Bonferroni across the report) that yields a
recommendation only when a difference is significant (docs/variants.md)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from chatplane.persistence.store.answer_metrics import VariantStats

# scipy.stats takes 1.5-2 s to import: each function imports it, so it is loaded by the
# first report rather than at every start of Persistence.

DEFAULT_ALPHA = 0.05

# The verdicts; CONTROL is also the name a variant gets picked as control by.
CONTROL = "control"
BETTER = "better"
WORSE = "worse"
MIXED = "mixed"
NO_DIFFERENCE = "no significant difference"


@dataclass(frozen=True, slots=True)
class Interval:
    """A two-sided confidence interval."""

    low: float
    high: float


@dataclass(frozen=True, slots=True)
class VariantAnalysis:
    """One variant's intervals and, for a variant other than the control, its tests."""

    thumbs_up_rate: Interval | None = None
    mean_score: Interval | None = None
    score_stddev: float | None = None
    thumbs_up_p_value: float | None = None
    mean_score_p_value: float | None = None
    verdict: str = ""


@dataclass(frozen=True, slots=True)
class Comparison:
    """The report's analysis: per variant (by name), the control, the number of tests (each
    judged at alpha / comparisons) and the recommendation ("" when nothing is significant)."""

    variants: dict[str, VariantAnalysis]
    control: str
    alpha: float
    comparisons: int
    recommended_variant: str = ""
    recommendation: str = ""


def wilson_interval(successes: int, trials: int, alpha: float) -> Interval | None:
    """The Wilson score interval of a proportion at confidence 1 - alpha (None: no trials)."""
    if trials <= 0:
        return None
    from scipy import stats  # noqa: PLC0415 (slow import, see above)

    ci = stats.binomtest(successes, trials).proportion_ci(1 - alpha, method="wilson")
    return Interval(float(ci.low), float(ci.high))


def score_stddev(v: VariantStats) -> float | None:
    """The sample standard deviation of the scores, from their sums (None below two)."""
    n = v.scored_count
    if n < 2:
        return None
    # Integers all the way: n·Σx² - (Σx)² is exact, so the variance never goes negative.
    variance = (n * v.score_square_sum - v.score_sum**2) / (n * (n - 1))
    return math.sqrt(max(variance, 0.0))


def mean_interval(v: VariantStats, alpha: float) -> Interval | None:
    """Student's t interval of the mean score at confidence 1 - alpha (None below two)."""
    sd = score_stddev(v)
    if sd is None or v.mean_score is None:
        return None
    if sd == 0:
        return Interval(v.mean_score, v.mean_score)
    from scipy import stats  # noqa: PLC0415 (slow import, see above)

    low, high = stats.t.interval(
        1 - alpha, v.scored_count - 1, loc=v.mean_score, scale=sd / math.sqrt(v.scored_count)
    )
    return Interval(float(low), float(high))


def choose_control(variants: Sequence[VariantStats], requested: str) -> str:
    """The requested control when it is there; else "control"; else the variant with the
    most feedback (the incumbent normally gets most traffic), by name on a tie."""
    names = {v.variant for v in variants}
    if requested:
        return requested if requested in names else ""
    if CONTROL in names:
        return CONTROL
    return min(variants, key=lambda v: (-v.feedback_count, v.variant)).variant if variants else ""


def _p_value(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _thumbs_p(challenger: VariantStats, control: VariantStats) -> float | None:
    if not challenger.feedback_count or not control.feedback_count:
        return None
    import numpy as np  # noqa: PLC0415 (with scipy)
    from scipy import stats  # noqa: PLC0415 (slow import, see above)

    table = np.array(
        [
            [challenger.thumbs_up_count, challenger.feedback_count - challenger.thumbs_up_count],
            [control.thumbs_up_count, control.feedback_count - control.thumbs_up_count],
        ]
    )
    return _p_value(float(stats.fisher_exact(table).pvalue))


def _score_p(challenger: VariantStats, control: VariantStats) -> float | None:
    sd_challenger, sd_control = score_stddev(challenger), score_stddev(control)
    if (
        sd_challenger is None
        or sd_control is None
        or challenger.mean_score is None
        or control.mean_score is None
        or sd_challenger + sd_control == 0
    ):
        return None
    from scipy import stats  # noqa: PLC0415 (slow import, see above)

    result = stats.ttest_ind_from_stats(
        challenger.mean_score,
        sd_challenger,
        challenger.scored_count,
        control.mean_score,
        sd_control,
        control.scored_count,
        equal_var=False,
    )
    return _p_value(float(result.pvalue))


def _direction(
    p: float | None, threshold: float, challenger: float | None, control: float | None
) -> int:
    """+1 significantly higher, -1 significantly lower, 0 otherwise."""
    if p is None or p >= threshold or challenger is None or control is None:
        return 0
    return 1 if challenger > control else -1 if challenger < control else 0


def _verdict(directions: tuple[int, int], tested: bool) -> str:
    if not tested:
        return ""
    if 1 in directions and -1 in directions:
        return MIXED
    if 1 in directions:
        return BETTER
    if -1 in directions:
        return WORSE
    return NO_DIFFERENCE


def _percent(rate: float | None) -> str:
    return "—" if rate is None else f"{rate:.0%}"


def _score(mean: float | None) -> str:
    return "—" if mean is None else f"{mean:.2f}"


def compare(
    variants: Sequence[VariantStats], *, control: str = "", alpha: float = DEFAULT_ALPHA
) -> Comparison:
    """Intervals for every variant; tests of every other variant against the control."""
    chosen = choose_control(variants, control) if len(variants) > 1 else ""
    by_name = {v.variant: v for v in variants}
    base = by_name.get(chosen)
    p_values: dict[str, tuple[float | None, float | None]] = {}
    if base is not None:
        for v in variants:
            if v.variant != chosen:
                p_values[v.variant] = (_thumbs_p(v, base), _score_p(v, base))
    comparisons = sum(p is not None for pair in p_values.values() for p in pair)
    threshold = alpha / comparisons if comparisons else 0.0

    analyses: dict[str, VariantAnalysis] = {}
    directions: dict[str, tuple[int, int]] = {}
    for v in variants:
        thumbs_p, score_p = p_values.get(v.variant, (None, None))
        if base is not None and v.variant != chosen:
            directions[v.variant] = (
                _direction(thumbs_p, threshold, v.thumbs_up_rate, base.thumbs_up_rate),
                _direction(score_p, threshold, v.mean_score, base.mean_score),
            )
            verdict = _verdict(directions[v.variant], thumbs_p is not None or score_p is not None)
        else:
            verdict = CONTROL if v.variant == chosen else ""
        analyses[v.variant] = VariantAnalysis(
            thumbs_up_rate=wilson_interval(v.thumbs_up_count, v.feedback_count, alpha),
            mean_score=mean_interval(v, alpha),
            score_stddev=score_stddev(v),
            thumbs_up_p_value=thumbs_p,
            mean_score_p_value=score_p,
            verdict=verdict,
        )
    result = Comparison(analyses, chosen, alpha, comparisons)
    if base is None:
        return result
    better = [by_name[n] for n, a in analyses.items() if a.verdict == BETTER]
    worse = sorted(n for n, a in analyses.items() if a.verdict == WORSE)
    tests = f"{comparisons} test(s), each at alpha {alpha:g}/{comparisons}"
    if better:
        best = max(better, key=lambda v: (v.thumbs_up_rate or 0.0, v.mean_score or 0.0))
        why = _reasons(best, base, analyses[best.variant])
        return replace(
            result,
            recommended_variant=best.variant,
            recommendation=f"promote {best.variant} over {chosen}: {why}; {tests}",
        )
    if worse:
        return replace(
            result,
            recommended_variant=chosen,
            recommendation=f"keep {chosen}: {', '.join(worse)} significantly worse"
            f" and none better; {tests}",
        )
    return result


def _reasons(best: VariantStats, base: VariantStats, analysis: VariantAnalysis) -> str:
    parts = []
    if analysis.thumbs_up_p_value is not None:
        parts.append(
            f"thumbs up {_percent(best.thumbs_up_rate)} vs {_percent(base.thumbs_up_rate)}"
            f" (Fisher p = {analysis.thumbs_up_p_value:.2g})"
        )
    if analysis.mean_score_p_value is not None:
        parts.append(
            f"mean rating {_score(best.mean_score)} vs {_score(base.mean_score)}"
            f" (Welch p = {analysis.mean_score_p_value:.2g})"
        )
    return ", ".join(parts)
