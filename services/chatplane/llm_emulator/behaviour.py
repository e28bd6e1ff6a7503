"""What the emulator does with one request: its pacing, its answer's length and the fault it
injects. Behaviours come from rules set through the control API (matched by model, each used a
number of times or forever) or from an `x-emulator-behaviour` JSON header on the request."""

from __future__ import annotations

import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Fault = Literal[
    "none",
    "rate_limit",  # HTTP 429 with retry-after
    "overloaded",  # HTTP 529 overloaded_error (OpenAI protocol: 503)
    "server_error",  # HTTP 500 api_error
    "error_event",  # an `error` event after `after_tokens` tokens
    "stall",  # nothing more after `after_tokens` tokens (pings only), until the client goes
    "drop",  # the connection is cut after `after_tokens` tokens
]


class Behaviour(BaseModel):
    """How to answer one request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fault: Fault = "none"
    # Tokens streamed before a mid-stream fault (error_event, stall, drop).
    after_tokens: int = Field(default=0, ge=0)
    # Seconds in the retry-after header of rate_limit / overloaded answers.
    retry_after: float | None = Field(default=None, ge=0)
    # The `error.type` of an error event (or of an HTTP error body).
    error_type: str | None = None
    # Pacing and length; None: the emulator's defaults.
    first_token_seconds: float | None = Field(default=None, ge=0)
    tokens_per_second: float | None = Field(default=None, gt=0)
    tokens: int | None = Field(default=None, ge=0)


class Rule(BaseModel):
    """A behaviour for requests of one model ("*": any), `times` times (None: until reset)."""

    model_config = ConfigDict(extra="forbid")

    model: str = "*"
    times: int | None = Field(default=None, gt=0)
    # The share of matching requests the rule applies to (the others fall through).
    probability: float = Field(default=1.0, gt=0, le=1)
    behaviour: Behaviour = Behaviour()
    # Only requests whose prompt (the JSON body's text) contains this string (rag: tests
    # script the emulator to detect text planted in retrieved documents).
    prompt_contains: str | None = None


class RuleBook:
    """The rules in force; the first rule matching a request's model (with uses left) wins."""

    def __init__(self, seed: int = 0) -> None:
        self._rules: list[Rule] = []
        # Seeded: a scripted storm draws the same faults on every run.
        self._random = random.Random(seed)

    def replace(self, rules: list[Rule]) -> None:
        """Sets the rules (an empty list: every request answers normally)."""
        self._rules = [rule.model_copy() for rule in rules]

    def behaviour_for(self, model: str, prompt: str = "") -> Behaviour:
        """The behaviour of the next request for `model` with this `prompt` (consumes one use
        of its rule)."""
        for rule in self._rules:
            if rule.model not in ("*", model):
                continue
            if rule.prompt_contains is not None and rule.prompt_contains not in prompt:
                continue
            if rule.probability < 1 and self._random.random() >= rule.probability:
                continue
            if rule.times is not None:
                rule.times -= 1
                if rule.times == 0:
                    self._rules.remove(rule)
            return rule.behaviour
        return Behaviour()
