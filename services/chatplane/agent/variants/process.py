"""The Agent process's variant router: the experiment from settings, each variant's model
chain built like the default one and sharing its providers' circuit breakers."""

from __future__ import annotations

import grpc

from chatplane.agent.llm.circuit_breaker import CircuitBreaker
from chatplane.agent.llm.factory import build_model_chain
from chatplane.agent.llm.model_chain import ModelChain
from chatplane.agent.variants.experiment import VariantSource
from chatplane.agent.variants.registry_source import RegistryVariantSource
from chatplane.agent.variants.router import VariantRouter
from chatplane.agent.variants.settings_source import SettingsVariantSource
from chatplane.common.metrics import TenantLabels
from chatplane.common.settings import Settings
from chatplane.persistence.client import PersistenceClient


def variant_router(
    settings: Settings, default_chain: ModelChain, source: VariantSource | None = None
) -> VariantRouter:
    """The router of this process; raises VariantsConfigError (or LlmConfigError for a
    variant's unusable backend) at start-up."""
    breakers: dict[str, CircuitBreaker] = {
        route.backend.provider: route.breaker for route in default_chain.routes
    }
    tenants = TenantLabels(settings.metrics_tenant_limit)
    return VariantRouter(
        source or SettingsVariantSource(settings),
        settings,
        default_backend=default_chain,
        build_chain=lambda variant_settings: build_model_chain(
            variant_settings, breakers=breakers, tenants=tenants
        ),
    )


def registry_source(settings: Settings, persistence: grpc.aio.Channel) -> RegistryVariantSource:
    """The registry's experiment, falling back to the settings' (docs/registry.md)."""
    return RegistryVariantSource(
        PersistenceClient(persistence),
        SettingsVariantSource(settings),
        salt=settings.variants_salt,
        poll_seconds=settings.registry_poll_seconds,
        call_timeout_seconds=settings.internal_call_timeout_seconds,
    )
