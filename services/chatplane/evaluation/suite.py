"""A golden suite (docs/eval.md): documents to ingest, cases (earlier turns, a question,
expected facts, required citations, forbidden content) and the tolerances of a comparison,
read from YAML or JSON and validated with the place of the first problem."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_Text = Annotated[str, Field(min_length=1, max_length=32_000)]


class SuiteError(ValueError):
    """A suite file that cannot be run; the message says where and why."""


class SuiteDocument(BaseModel):
    """A document ingested for the run (and deleted after it): inline `text` or a `path`
    relative to the suite file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=256)]
    text: str | None = None
    path: str | None = None
    mime_type: str = "text/markdown"

    @model_validator(mode="after")
    def _one_source(self) -> SuiteDocument:
        if (self.text is None) == (self.path is None):
            raise ValueError("give exactly one of text and path")
        return self


class SuiteCase(BaseModel):
    """One question and what a good answer has and has not."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(pattern=_ID)]
    question: _Text
    # Earlier user turns of the same conversation, asked first (memory included), not scored.
    history: list[_Text] = Field(default_factory=list)
    # Earlier conversations of the same user, each asked first in a conversation of its own,
    # not scored: what long-term memory must recall across conversations.
    earlier_conversations: list[list[_Text]] = Field(default_factory=list)
    # Substrings the answer must contain (case and spacing ignored).
    expected_facts: list[_Text] = Field(default_factory=list)
    # Document names (or ids) that must be among the answer's citations.
    required_citations: list[_Text] = Field(default_factory=list)
    # Substrings the answer must not contain (case and spacing ignored).
    forbidden: list[_Text] = Field(default_factory=list)


class Tolerances(BaseModel):
    """How much worse than the baseline a candidate may be (and, alone, how good it must be)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Without a baseline: the share of cases that must pass.
    min_pass_rate: Annotated[float, Field(ge=0, le=1)] = 1.0
    # With a baseline: cases that pass on the baseline and may fail on the candidate.
    max_regressed_cases: Annotated[int, Field(ge=0)] = 0
    # With a baseline: how far the pass rate may drop (0.1 = ten points).
    pass_rate_drop: Annotated[float, Field(ge=0, le=1)] = 0.0
    # With a baseline: how much longer the mean answer time may be (1.0 = twice as long).
    latency_increase: Annotated[float, Field(ge=0)] = 1.0
    # With a baseline: how much more the run may cost (0.25 = a quarter more).
    cost_increase: Annotated[float, Field(ge=0)] = 0.25


class Suite(BaseModel):
    """A whole suite."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=_ID)]
    description: str = ""
    documents: list[SuiteDocument] = Field(default_factory=list)
    cases: Annotated[list[SuiteCase], Field(min_length=1)]
    tolerances: Tolerances = Tolerances()

    @model_validator(mode="after")
    def _unique_ids(self) -> Suite:
        seen: set[str] = set()
        for case in self.cases:
            if case.id in seen:
                raise ValueError(f"case id {case.id!r} is used twice")
            seen.add(case.id)
        return self


def load_suite(path: Path) -> tuple[Suite, dict[str, bytes]]:
    """The suite and each document's content by name; SuiteError when unusable."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SuiteError(f"cannot read {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise SuiteError(f"{path} is not YAML or JSON: {error}") from None
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "suite"
        raise SuiteError(f"{path}: {where}: {first['msg']}") from None
    contents: dict[str, bytes] = {}
    for document in suite.documents:
        if document.text is not None:
            contents[document.name] = document.text.encode("utf-8")
            continue
        source = path.parent / (document.path or "")
        try:
            contents[document.name] = source.read_bytes()
        except OSError as error:
            raise SuiteError(f"cannot read document {source}: {error.strerror}") from None
    return suite, contents
