"""Builds the Agent's model chain from settings: which backend answers (`llm_backend`, where
`auto` means Anthropic when an API key is configured and the offline responder otherwise),
its fallbacks, and one circuit breaker per provider."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from chatplane.agent.llm.anthropic_messages import AnthropicBackend
from chatplane.agent.llm.base import LlmBackend
from chatplane.agent.llm.circuit_breaker import CircuitBreaker
from chatplane.agent.llm.model_chain import ModelChain, Route
from chatplane.agent.llm.observed import ObservedBackend, export_breaker
from chatplane.agent.llm.offline import MODEL_NAME as OFFLINE_MODEL
from chatplane.agent.llm.offline import OfflineResponder
from chatplane.agent.llm.openai_chat import OpenAiChatBackend
from chatplane.common.errors import ConfigError
from chatplane.common.metrics import TenantLabels
from chatplane.common.settings import Settings

BackendKind = Literal["offline", "anthropic", "openai_compatible"]
_KINDS: tuple[BackendKind, ...] = ("offline", "anthropic", "openai_compatible")


class LlmConfigError(ConfigError):
    """The LLM settings do not describe a usable backend (reported at start-up)."""


def _secret(value: str, path: Path | None) -> str:
    """A key from its setting, else from its secrets file (first line)."""
    if value:
        return value.strip()
    if path is None:
        return ""
    try:
        lines = path.read_text().strip().splitlines()
    except OSError as error:
        raise LlmConfigError(f"cannot read the key file {path}: {error.strerror}") from None
    return lines[0].strip() if lines else ""


def anthropic_api_key(settings: Settings) -> str:
    """The Anthropic API key from the environment or the secrets file ('' if none)."""
    return _secret(settings.anthropic_api_key.get_secret_value(), settings.anthropic_api_key_file)


def primary_kind(settings: Settings) -> BackendKind:
    """The backend of the configured model."""
    if settings.llm_backend == "auto":
        return "anthropic" if anthropic_api_key(settings) else "offline"
    return settings.llm_backend


def _default_model(kind: BackendKind, settings: Settings) -> str:
    if kind == "anthropic":
        return settings.anthropic_default_model
    if kind == "offline":
        return OFFLINE_MODEL
    raise LlmConfigError("openai_compatible needs a model: set CHATPLANE_LLM_MODEL")


def model_specs(settings: Settings) -> list[tuple[BackendKind, str]]:
    """(backend, model) of the configured model, then of each fallback."""
    kind = primary_kind(settings)
    specs = [(kind, settings.llm_model or _default_model(kind, settings))]
    for entry in settings.llm_fallbacks:
        name, _, model = entry.partition(":")
        if name not in _KINDS:
            raise LlmConfigError(
                f"llm_fallbacks entry {entry!r}: the backend must be one of {', '.join(_KINDS)}"
            )
        fallback_kind: BackendKind = name
        specs.append((fallback_kind, model or _default_model(fallback_kind, settings)))
    return specs


def _backend(kind: BackendKind, model: str, settings: Settings) -> LlmBackend:
    if kind == "offline":
        return OfflineResponder(
            tokens_per_second=settings.offline_tokens_per_second,
            first_token_seconds=settings.offline_first_token_seconds,
            max_tokens=settings.offline_max_tokens,
        )
    if kind == "anthropic":
        key = anthropic_api_key(settings)
        if not key:
            raise LlmConfigError(
                "the anthropic backend needs ANTHROPIC_API_KEY or CHATPLANE_ANTHROPIC_API_KEY_FILE"
            )
        return AnthropicBackend(
            model=model,
            api_key=key,
            base_url=settings.anthropic_base_url,
            max_retries=settings.llm_max_retries,
            connect_timeout=settings.llm_connect_timeout_seconds,
            read_timeout=settings.llm_stall_timeout_seconds,
            prompt_caching=settings.anthropic_prompt_caching,
        )
    if not settings.openai_base_url:
        raise LlmConfigError("the openai_compatible backend needs CHATPLANE_OPENAI_BASE_URL")
    return OpenAiChatBackend(
        model=model,
        api_key=_secret(settings.openai_api_key.get_secret_value(), settings.openai_api_key_file),
        base_url=settings.openai_base_url,
        max_retries=settings.llm_max_retries,
        connect_timeout=settings.llm_connect_timeout_seconds,
        read_timeout=settings.llm_stall_timeout_seconds,
    )


def build_model_chain(
    settings: Settings,
    *,
    breakers: dict[str, CircuitBreaker] | None = None,
    tenants: TenantLabels | None = None,
) -> ModelChain:
    """The configured model and its fallbacks, with a breaker per provider. Chains built
    for A/B variants pass the process's `breakers` and `tenants`, so one provider has one
    breaker and one tenant-label bound whatever variant calls it."""
    breakers = {} if breakers is None else breakers
    routes: list[Route] = []
    # One bound on the tenant label for every model of this process.
    tenants = tenants or TenantLabels(settings.metrics_tenant_limit)
    for kind, model in model_specs(settings):
        # Every model tried is observed: a span with GenAI attributes, token metrics.
        backend = ObservedBackend(_backend(kind, model, settings), system=kind, tenants=tenants)
        breaker = breakers.get(backend.provider)
        if breaker is None:
            breaker = breakers[backend.provider] = CircuitBreaker(
                backend.provider,
                failure_threshold=settings.llm_breaker_failures,
                cooldown_seconds=settings.llm_breaker_cooldown_seconds,
            )
            export_breaker(breaker)
        routes.append(Route(backend=backend, breaker=breaker))
    return ModelChain(routes, stall_timeout_seconds=settings.llm_stall_timeout_seconds)
