"""What an experiment is: named variants with weights and the salt of their assignment, and
the small interface that supplies them (settings today; a versioned registry later)."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

from chatplane.common.errors import ConfigError

__all__ = [
    "DEFAULT_VARIANT",
    "Experiment",
    "FixedVariantSource",
    "Variant",
    "VariantSource",
    "VariantsConfigError",
]


class VariantsConfigError(ConfigError):
    """The configured variants are unusable (reported at start-up; the Agent exits 2)."""

    heading = "invalid A/B variants (docs/variants.md)"


DEFAULT_VARIANT = "default"
"""The variant recorded when no variants are configured: today's settings, unchanged."""


@dataclass(frozen=True, slots=True)
class Variant:
    """One arm of the experiment. Unset fields (None) take the Agent's settings."""

    name: str
    weight: float = 1.0
    # Which backend answers and with what model; fallbacks as in CHATPLANE_LLM_FALLBACKS.
    backend: str | None = None
    model: str | None = None
    fallbacks: tuple[str, ...] | None = None
    # Replaces the assistant's instructions; the rule that recalled passages are data, never
    # instructions, is always appended.
    system_prompt: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    # How many passages memory recalls (CHATPLANE_RECALL_TOP_K).
    retrieval_k: int | None = None
    # A registry's version of this variant (issue 8); None for settings.
    version: str | None = None
    # Retrieval filters of a registry variant (docs/registry.md): the kinds of recalled items
    # ("turn", "document") and the document names the prompt may use; None: all.
    retrieval_kinds: tuple[str, ...] | None = None
    retrieval_documents: tuple[str, ...] | None = None

    @property
    def identifier(self) -> str:
        """What every answer records: NAME, or NAME@VERSION once variants are versioned."""
        return self.name if self.version is None else f"{self.name}@{self.version}"


@dataclass(frozen=True, slots=True)
class Experiment:
    """The variants users are split between, in a fixed order, and the assignment's salt
    (a new salt reshuffles every user: a new experiment)."""

    variants: tuple[Variant, ...]
    salt: str

    def __post_init__(self) -> None:
        if not self.variants:
            raise VariantsConfigError("an experiment needs at least one variant")

    @classmethod
    def single(cls, salt: str = "") -> Experiment:
        """No experiment: everyone gets the default variant (today's settings)."""
        return cls((Variant(DEFAULT_VARIANT),), salt)

    @property
    def names(self) -> Sequence[str]:
        """The variants' identifiers, in order."""
        return [variant.identifier for variant in self.variants]


class VariantSource(abc.ABC):
    """Where the Agent gets its experiment from. `experiment()` is called once per turn and
    must be cheap: a source that changes (a registry with stages and canary shares) keeps
    its latest snapshot in memory and replaces it whole."""

    @abc.abstractmethod
    def experiment(self) -> Experiment:
        """The experiment in force now."""


class FixedVariantSource(VariantSource):
    """An experiment that never changes (tests, and the Agent without variants)."""

    def __init__(self, experiment: Experiment) -> None:
        self._experiment = experiment

    def experiment(self) -> Experiment:
        return self._experiment
