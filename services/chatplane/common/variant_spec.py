"""A registry variant's configuration (docs/registry.md): what a `chatplane variants push`
file holds, validated the same way by the CLI, the system of record and the Agent, and its
canonical JSON (the immutable stored form, and what `variants diff` compares)."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_IDENTIFIER = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]{0,63})@([1-9][0-9]{0,8})$")
BACKENDS = ("offline", "anthropic", "openai_compatible")
RETRIEVAL_KINDS = ("turn", "document")
MAX_SPEC_CHARS = 64 * 1024


class VariantSpecError(ValueError):
    """A configuration that cannot be stored; the message says where and why."""


class VariantSpec(BaseModel):
    """One answer configuration. Unset fields take the Agent's own settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    description: Annotated[str, Field(max_length=1000)] | None = None
    backend: Literal["offline", "anthropic", "openai_compatible"] | None = None
    model: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    fallbacks: list[Annotated[str, Field(min_length=1, max_length=300)]] | None = None
    system_prompt: Annotated[str, Field(min_length=1, max_length=32_000)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, Field(gt=0, le=1_000_000)] | None = None
    retrieval_k: Annotated[int, Field(ge=0, le=100)] | None = None
    # Retrieval filters: which kinds of recalled items the prompt may use, and which
    # documents (by name); None: every kind, every document.
    retrieval_kinds: list[Literal["turn", "document"]] | None = None
    retrieval_documents: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = None

    def canonical_json(self) -> str:
        """The stored form: sorted keys, no unset fields, no spaces."""
        return json.dumps(self.model_dump(exclude_none=True), sort_keys=True, separators=(",", ":"))

    def sha256(self) -> str:
        """SHA-256 of the canonical JSON, hex."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "spec"
    return f"{where}: {first['msg']}"


def spec_from_data(raw: Any) -> VariantSpec:
    """A validated configuration from decoded JSON/YAML."""
    if not isinstance(raw, dict):
        raise VariantSpecError("spec: must be a mapping of fields (name, model, ...)")
    try:
        return VariantSpec.model_validate(raw)
    except ValidationError as error:
        raise VariantSpecError(_first_error(error)) from None


def parse_spec(text: str) -> VariantSpec:
    """A validated configuration from JSON or YAML text (YAML 1.2 reads JSON too)."""
    if len(text) > MAX_SPEC_CHARS:
        raise VariantSpecError(f"spec: must be at most {MAX_SPEC_CHARS} characters")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise VariantSpecError(f"spec: not JSON or YAML: {error}") from None
    except RecursionError:
        raise VariantSpecError("spec: nested too deeply") from None
    return spec_from_data(raw)


def parse_identifier(identifier: str) -> tuple[str, int]:
    """NAME@VERSION → (name, version); VariantSpecError otherwise."""
    match = _IDENTIFIER.match(identifier)
    if match is None:
        raise VariantSpecError(f"{identifier[:80]!r} is not NAME@VERSION (e.g. support@3)")
    return match.group(1), int(match.group(2))


def identifier(name: str, version: int) -> str:
    """NAME@VERSION."""
    return f"{name}@{version}"
