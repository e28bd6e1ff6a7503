"""Variants from settings: `CHATPLANE_VARIANTS` (a JSON list) or `CHATPLANE_VARIANTS_FILE` (a
JSON or YAML file holding the list), validated once at start-up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from chatplane.agent.variants.experiment import (
    Experiment,
    Variant,
    VariantsConfigError,
    VariantSource,
)
from chatplane.common.settings import Settings

_BACKENDS = ("offline", "anthropic", "openai_compatible")
# Letters, digits, '.', '_', '-': safe in logs, metrics and as the NAME of NAME@VERSION.
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class _VariantSpec(BaseModel):
    """One variant as written in the settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=_NAME_PATTERN)]
    weight: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    backend: str | None = None
    model: str | None = None
    fallbacks: list[str] | None = None
    system_prompt: Annotated[str, Field(min_length=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, Field(gt=0)] | None = None
    retrieval_k: Annotated[int, Field(ge=0, le=100)] | None = None


_SPECS = TypeAdapter(list[_VariantSpec])


def _first_error(error: ValidationError) -> str:
    """The first problem, with where it is: `variants[1].weight: Input should be greater…`."""
    first = error.errors()[0]
    where = "variants" + "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"]
    )
    return f"{where}: {first['msg']}"


def parse_variants(raw: Any) -> tuple[Variant, ...]:
    """Validated variants from decoded JSON/YAML; VariantsConfigError says what is wrong."""
    try:
        specs = _SPECS.validate_python(raw)
    except ValidationError as error:
        raise VariantsConfigError(_first_error(error)) from None
    if not specs:
        raise VariantsConfigError("variants: the list is empty (leave the setting unset instead)")
    seen: set[str] = set()
    for index, spec in enumerate(specs):
        if spec.name in seen:
            raise VariantsConfigError(f"variants[{index}].name: {spec.name!r} is used twice")
        seen.add(spec.name)
        if spec.backend is not None and spec.backend not in _BACKENDS:
            raise VariantsConfigError(
                f"variants[{index}].backend: must be one of {', '.join(_BACKENDS)}"
            )
    return tuple(
        Variant(
            name=spec.name,
            weight=spec.weight,
            backend=spec.backend,
            model=spec.model,
            fallbacks=None if spec.fallbacks is None else tuple(spec.fallbacks),
            system_prompt=spec.system_prompt,
            temperature=spec.temperature,
            max_tokens=spec.max_tokens,
            retrieval_k=spec.retrieval_k,
        )
        for spec in specs
    )


def _decoded(settings: Settings) -> Any:
    if settings.variants and settings.variants_file:
        raise VariantsConfigError("set CHATPLANE_VARIANTS or CHATPLANE_VARIANTS_FILE, not both")
    if settings.variants:
        try:
            return json.loads(settings.variants)
        except ValueError as error:
            raise VariantsConfigError(f"CHATPLANE_VARIANTS is not JSON: {error}") from None
    path = Path(settings.variants_file)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise VariantsConfigError(
            f"cannot read the variants file {path}: {error.strerror}"
        ) from None
    try:
        # YAML 1.2 is a superset of JSON: one loader reads both.
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise VariantsConfigError(
            f"the variants file {path} is not JSON or YAML: {error}"
        ) from None


class SettingsVariantSource(VariantSource):
    """The experiment written in the settings; without variants, the single default one."""

    def __init__(self, settings: Settings) -> None:
        if settings.variants or settings.variants_file:
            variants = parse_variants(_decoded(settings))
            self._experiment = Experiment(variants, settings.variants_salt)
        else:
            self._experiment = Experiment.single(settings.variants_salt)

    def experiment(self) -> Experiment:
        return self._experiment
