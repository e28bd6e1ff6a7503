"""The automatic handoff rules as configured (docs/handoff.md)."""

from __future__ import annotations

import pytest

from chatplane.common.errors import ConfigError
from chatplane.common.settings import Settings
from chatplane.gateway.handoff_rules import HandoffRules

RULES = HandoffRules.from_settings(Settings())


@pytest.mark.parametrize(
    "text",
    [
        "Can I talk to a human?",
        "I want to speak with a real person",
        "let me chat with an operator",
        "connect me to an agent please",
        "Transfer me to a representative",
        "REAL PERSON",
        "human, please",
        "Operator please!",
        "I need a human",
        "I'd like a person to look at this",
        "Get me a representative",
        "Kann ich mit einem Menschen sprechen?",
        "Quiero hablar con una persona",
        "Je veux parler à un conseiller",
    ],
)
def test_requests_for_a_person_fire(text: str) -> None:
    assert RULES.asks_for_human(text)


@pytest.mark.parametrize(
    "text",
    [
        "What is a human?",
        "How do humans sleep?",
        "Explain the person-to-person protocol",
        "Is the operator precedence left to right?",
        "Write a story about a real estate agent",
        "Tell me about human rights",
    ],
)
def test_ordinary_questions_do_not(text: str) -> None:
    assert not RULES.asks_for_human(text)


def test_patterns_and_threshold_are_configurable() -> None:
    rules = HandoffRules.from_settings(
        Settings(handoff_request_patterns=(r"\bsupport\b",), handoff_thumbs_down_threshold=0)
    )
    assert rules.asks_for_human("SUPPORT now") and not rules.asks_for_human("talk to a human")
    assert not rules.too_many_thumbs_down(100)  # 0 turns the rule off
    assert RULES.too_many_thumbs_down(3) and not RULES.too_many_thumbs_down(2)


def test_a_bad_pattern_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="CHATPLANE_HANDOFF_REQUEST_PATTERNS"):
        HandoffRules.from_settings(Settings(handoff_request_patterns=("(unclosed",)))
