"""The variant report's statistics (docs/variants.md): Wilson and t intervals against values
computed here independently (closed forms, published quantiles, the hypergeometric sum), and
a recommendation only for a significant difference after Bonferroni."""

from __future__ import annotations

import math

import pytest

from chatplane.persistence.store.answer_metrics import VariantStats
from chatplane.persistence.variant_significance import (
    BETTER,
    CONTROL,
    NO_DIFFERENCE,
    WORSE,
    compare,
    mean_interval,
    wilson_interval,
)

Z_975 = 1.959963984540054  # standard normal 97.5 % quantile
T_975_DF9 = 2.262157162798205  # Student t 97.5 % quantile, 9 degrees of freedom


def _variant(name: str, up: int, rated: int, scores: tuple[int, ...] = ()) -> VariantStats:
    return VariantStats(
        variant=name,
        answers=rated,
        interrupted_answers=0,
        feedback_count=rated,
        scored_count=len(scores),
        mean_score=sum(scores) / len(scores) if scores else None,
        thumbs_up_count=up,
        mean_first_token_ms=None,
        mean_duration_ms=None,
        mean_input_tokens=None,
        mean_output_tokens=None,
        score_sum=sum(scores),
        score_square_sum=sum(s * s for s in scores),
    )


def _wilson(k: int, n: int, z: float) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize(("k", "n"), [(7, 10), (0, 12), (45, 50), (1, 1)])
def test_wilson_interval_matches_the_closed_form(k: int, n: int) -> None:
    interval = wilson_interval(k, n, 0.05)
    assert interval is not None
    assert (interval.low, interval.high) == pytest.approx(_wilson(k, n, Z_975), abs=1e-9)
    assert wilson_interval(0, 0, 0.05) is None


def test_mean_interval_is_the_t_interval_of_the_sample_variance() -> None:
    scores = (5, 4, 4, 3, 5, 2, 4, 5, 3, 4)  # mean 3.9
    mean = sum(scores) / 10
    sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / 9)
    interval = mean_interval(_variant("a", 0, 10, scores), 0.05)
    assert interval is not None
    half = T_975_DF9 * sd / math.sqrt(10)
    assert (interval.low, interval.high) == pytest.approx((mean - half, mean + half), abs=1e-9)
    assert mean_interval(_variant("a", 0, 1, (4,)), 0.05) is None


def test_fisher_p_value_and_report_fields() -> None:
    # Two-sided Fisher: sum of the hypergeometric tables no likelier than the observed one.
    def table_p(a: int) -> float:
        return math.comb(9, a) * math.comb(11, 10 - a) / math.comb(20, 10)

    observed = table_p(7)
    expected = sum(table_p(a) for a in range(0, 10) if table_p(a) <= observed * (1 + 1e-7))
    result = compare([_variant("control", 2, 10), _variant("new", 7, 10)])
    assert result.control == "control"
    assert result.comparisons == 1
    assert result.variants["new"].thumbs_up_p_value == pytest.approx(expected, rel=1e-9)
    assert result.variants["control"].verdict == CONTROL
    # p ≈ 0.07: not significant, so no recommendation.
    assert result.variants["new"].verdict == NO_DIFFERENCE
    assert (result.recommended_variant, result.recommendation) == ("", "")


def test_a_significant_difference_is_recommended() -> None:
    result = compare(
        [
            _variant("control", 50, 100, (3,) * 50 + (4,) * 50),
            _variant("new@2", 80, 100, (4,) * 50 + (5,) * 50),
        ]
    )
    assert result.comparisons == 2
    assert result.variants["new@2"].verdict == BETTER
    assert result.recommended_variant == "new@2"
    assert result.recommendation.startswith("promote new@2 over control: thumbs up 80% vs 50%")


def test_bonferroni_withholds_a_recommendation_only_significant_alone() -> None:
    # Fisher p ≈ 0.033 for 56/100 against 40/100: significant as the only test (0.05)...
    alone = compare([_variant("control", 40, 100), _variant("b", 56, 100)])
    assert alone.recommended_variant == "b"
    # ...but not as one of two tests (0.025 each).
    two = compare([_variant("control", 40, 100), _variant("b", 56, 100), _variant("c", 41, 100)])
    assert two.comparisons == 2
    assert two.variants["b"].thumbs_up_p_value == pytest.approx(0.0335, abs=1e-3)
    assert two.variants["b"].verdict == NO_DIFFERENCE
    assert two.recommended_variant == ""


def test_control_choice_and_a_worse_challenger() -> None:
    # No "control": the variant with the most feedback is the control.
    result = compare([_variant("big", 70, 100), _variant("small", 10, 40)])
    assert result.control == "big"
    assert result.variants["small"].verdict == WORSE
    assert result.recommended_variant == "big"
    assert result.recommendation.startswith("keep big: small significantly worse")
    # An explicit control; one variant alone is compared with nothing.
    assert (
        compare([_variant("big", 70, 100), _variant("small", 10, 40)], control="small").control
        == "small"
    )
    single = compare([_variant("only", 3, 4)])
    assert (single.control, single.comparisons, single.variants["only"].verdict) == ("", 0, "")
