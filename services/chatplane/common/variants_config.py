"""The start-up error of unusable A/B variant settings (docs/variants.md), here so that the
service entry point can report it without importing the Agent."""


class VariantsConfigError(ValueError):
    """The configured variants are unusable (reported at start-up; the Agent exits 2)."""
