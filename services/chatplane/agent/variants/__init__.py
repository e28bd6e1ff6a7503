"""A/B variants of the Agent (docs/variants.md): named configurations (model chain, system
prompt, temperature, max tokens, retrieval k) with weights, assigned sticky per user."""

from chatplane.agent.variants.assignment import assign, bucket_point
from chatplane.agent.variants.experiment import (
    DEFAULT_VARIANT,
    Experiment,
    FixedVariantSource,
    Variant,
    VariantsConfigError,
    VariantSource,
)
from chatplane.agent.variants.router import AppliedVariant, VariantRouter
from chatplane.agent.variants.settings_source import SettingsVariantSource

__all__ = [
    "DEFAULT_VARIANT",
    "AppliedVariant",
    "Experiment",
    "FixedVariantSource",
    "SettingsVariantSource",
    "Variant",
    "VariantRouter",
    "VariantSource",
    "VariantsConfigError",
    "assign",
    "bucket_point",
]
