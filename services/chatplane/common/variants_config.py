"""The start-up error of unusable A/B variant settings (docs/variants.md), here so that the
service entry point can report it without importing the Agent."""

from chatplane.common.errors import ConfigError


class VariantsConfigError(ConfigError):
    """The configured variants are unusable (reported at start-up; the Agent exits 2)."""

    heading = "invalid A/B variants (docs/variants.md)"
