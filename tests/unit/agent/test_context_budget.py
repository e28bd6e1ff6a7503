"""Fitting recent turns and recalled passages into the token budget (context_budget)."""

from __future__ import annotations

import random

import pytest

from chatplane.agent.context_budget import (
    context_budget,
    estimate_prompt_tokens,
    fit_context,
)


def fit(history: list[int], passages: list[int], budget: int, fixed: int = 0):  # type: ignore[no-untyped-def]
    """Items are their own costs; ids are their positions, so assertions read positions."""
    return fit_context(
        fixed_tokens=fixed,
        history=list(enumerate(history)),
        passages=list(enumerate(passages)),
        budget_tokens=budget,
        history_cost=lambda item: item[1],
        passage_cost=lambda item: item[1],
    )


def positions(items: list[tuple[int, int]]) -> list[int]:
    return [position for position, _ in items]


def test_everything_fits() -> None:
    fitted = fit([1, 2, 3], [4, 5], budget=100, fixed=10)
    assert positions(fitted.history) == [0, 1, 2]
    assert positions(fitted.passages) == [0, 1]
    assert fitted.tokens == 10 + 1 + 2 + 3 + 4 + 5


def test_nothing_but_the_fixed_part_when_it_fills_the_budget() -> None:
    fitted = fit([1], [1], budget=10, fixed=10)
    assert fitted.history == [] and fitted.passages == []
    assert fitted.tokens == 10


def test_over_budget_fixed_part_is_kept_and_nothing_else() -> None:
    # The question is part of the fixed tokens: never dropped, even alone over budget.
    fitted = fit([1, 1], [1, 1], budget=5, fixed=50)
    assert fitted.history == [] and fitted.passages == []
    assert fitted.tokens == 50


def test_history_is_kept_newest_first_and_returned_oldest_first() -> None:
    fitted = fit([10, 10, 10, 10], [], budget=25)
    assert positions(fitted.history) == [2, 3]


def test_passages_are_kept_best_first() -> None:
    fitted = fit([], [10, 10, 10, 10], budget=25)
    assert positions(fitted.passages) == [0, 1]


def test_turns_and_passages_alternate_so_neither_starves() -> None:
    fitted = fit([10] * 5, [10] * 5, budget=40)
    assert positions(fitted.history) == [3, 4]
    assert positions(fitted.passages) == [0, 1]


def test_the_newest_turn_goes_in_before_the_best_passage() -> None:
    fitted = fit([10, 10], [10, 10], budget=10)
    assert positions(fitted.history) == [1]
    assert fitted.passages == []


def test_a_turn_that_does_not_fit_closes_the_history_no_gaps() -> None:
    # The older small turn would fit, but keeping it would drop a newer one in between.
    fitted = fit([1, 50, 1], [], budget=10)
    assert positions(fitted.history) == [2]


def test_a_passage_that_does_not_fit_closes_the_passages_no_skipping() -> None:
    # A less relevant small passage never takes the place of a more relevant one.
    fitted = fit([], [1, 50, 1], budget=10)
    assert positions(fitted.passages) == [0]


def test_a_closed_list_leaves_room_to_the_other() -> None:
    fitted = fit([100, 1], [5, 5, 5], budget=20)
    assert positions(fitted.history) == [1]
    assert positions(fitted.passages) == [0, 1, 2]
    assert fitted.tokens == 16


def test_exactly_the_budget_fits() -> None:
    fitted = fit([5], [5], budget=10)
    assert fitted.tokens == 10
    assert len(fitted.history) == 1 and len(fitted.passages) == 1


def test_empty_inputs() -> None:
    fitted = fit([], [], budget=0, fixed=3)
    assert fitted.history == [] and fitted.passages == [] and fitted.tokens == 3


@pytest.mark.parametrize("seed", range(200))
def test_random_inputs_keep_the_invariants(seed: int) -> None:
    rng = random.Random(seed)
    history = [rng.randint(1, 40) for _ in range(rng.randint(0, 12))]
    passages = [rng.randint(1, 40) for _ in range(rng.randint(0, 12))]
    fixed = rng.randint(0, 60)
    budget = rng.randint(0, 300)
    fitted = fit(history, passages, budget, fixed)
    kept_history, kept_passages = positions(fitted.history), positions(fitted.passages)
    # Within budget (beyond the fixed part, which is always kept).
    assert fitted.tokens == fixed + sum(c for _, c in fitted.history) + sum(
        c for _, c in fitted.passages
    )
    assert fitted.tokens <= max(budget, fixed)
    # History: a suffix (the newest turns), oldest first. Passages: a prefix (the best).
    assert kept_history == list(range(len(history) - len(kept_history), len(history)))
    assert kept_passages == list(range(len(kept_passages)))
    # Maximal: the next candidate of each list does not fit in what is left.
    left = max(budget, fixed) - fitted.tokens
    if len(kept_history) < len(history):
        assert history[len(history) - len(kept_history) - 1] > left
    if len(kept_passages) < len(passages):
        assert passages[len(kept_passages)] > left


def test_the_window_less_the_answer_caps_the_budget() -> None:
    assert (
        context_budget(budget_tokens=3000, context_window_tokens=None, max_output_tokens=9) == 3000
    )
    assert (
        context_budget(budget_tokens=3000, context_window_tokens=4000, max_output_tokens=1024)
        == 2976
    )
    assert (
        context_budget(budget_tokens=3000, context_window_tokens=8000, max_output_tokens=1024)
        == 3000
    )
    assert (
        context_budget(budget_tokens=3000, context_window_tokens=500, max_output_tokens=1024) == 0
    )


def test_the_estimate_counts_bytes_so_other_scripts_are_not_undercounted() -> None:
    assert estimate_prompt_tokens("") == 0
    assert estimate_prompt_tokens("abcd") == 1
    assert estimate_prompt_tokens("abcde") == 2
    assert estimate_prompt_tokens("日本語の文") == 4  # 15 bytes: about one token a character
