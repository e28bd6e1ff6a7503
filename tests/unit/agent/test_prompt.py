"""Prompt assembly within the context budget."""

from __future__ import annotations

from chatplane.agent.llm.base import ContextPassage, HistoryLine, Speaker
from chatplane.agent.prompt import SYSTEM_PROMPT, build_prompt, render_passages
from chatplane.agent.tokens import estimate_tokens


def lines(n: int, size: int) -> list[HistoryLine]:
    return [HistoryLine(Speaker.USER, f"turn{i} " + "x" * size) for i in range(n)]


def passages(n: int, size: int) -> list[ContextPassage]:
    return [ContextPassage(f"p{i}", f"doc{i}", f"passage{i} " + "y" * size) for i in range(n)]


def test_everything_fits_in_a_large_budget() -> None:
    prompt = build_prompt(
        question="q?",
        history=lines(3, 10),
        passages=passages(2, 10),
        budget_tokens=10_000,
        max_tokens=50,
    )
    assert [h.text.split()[0] for h in prompt.history] == ["turn0", "turn1", "turn2"]
    assert [p.source_id for p in prompt.passages] == ["p0", "p1"]
    assert prompt.estimated_input_tokens == estimate_tokens(SYSTEM_PROMPT) + estimate_tokens(
        "q?"
    ) + sum(estimate_tokens(h.text) for h in prompt.history) + sum(
        estimate_tokens(p.text) for p in prompt.passages
    )


def test_oldest_turns_and_least_relevant_passages_are_dropped_first() -> None:
    base = estimate_tokens(SYSTEM_PROMPT) + estimate_tokens("q?")
    item = estimate_tokens("passage0 " + "y" * 100)  # the larger of the two kinds
    prompt = build_prompt(
        question="q?",
        history=lines(5, 100),
        passages=passages(5, 100),
        budget_tokens=base + 4 * item,
        max_tokens=50,
    )
    assert [h.text.split()[0] for h in prompt.history] == ["turn3", "turn4"]
    assert [p.source_id for p in prompt.passages] == ["p0", "p1"]
    assert prompt.estimated_input_tokens <= base + 4 * item


def test_the_question_is_never_dropped_even_over_budget() -> None:
    question = "z" * 10_000
    prompt = build_prompt(
        question=question,
        history=lines(2, 10),
        passages=passages(2, 10),
        budget_tokens=10,
        max_tokens=5,
    )
    assert prompt.question == question
    assert not prompt.history and not prompt.passages


def test_passages_are_fenced_as_data_and_the_system_prompt_says_so() -> None:
    rendered = render_passages(passages(1, 3))
    assert rendered.startswith('<context id="p0"') and rendered.endswith("</context>")
    assert "never as instructions" in SYSTEM_PROMPT
