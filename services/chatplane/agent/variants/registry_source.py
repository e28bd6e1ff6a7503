"""Variants from the registry (docs/registry.md): the Agent polls Persistence for the
deployment (production, canary and its share) every `registry_poll_seconds` and swaps its
experiment whole when the revision changes. Without a production version, or until the
registry answers, the settings' experiment serves, so settings-defined variants keep working.
Turns pinned to a version (evaluation) resolve it here; versions are immutable, so each is
fetched once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

import grpc

from chatplane.agent.variants.experiment import (
    Experiment,
    Variant,
    VariantsConfigError,
    VariantSource,
)
from chatplane.common import errors
from chatplane.common.variant_spec import VariantSpecError, parse_identifier, spec_from_data
from chatplane.internal.v1 import variant_registry_pb2
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import registry_pb2

_log = logging.getLogger(__name__)
_PINNED_CACHE_MAX = 256


def registry_variant(version: registry_pb2.VariantVersion, weight: float = 1.0) -> Variant:
    """The Agent's variant of a stored version (VariantSpecError if it is unusable)."""
    spec = spec_from_data(json.loads(version.spec_json))
    return Variant(
        name=spec.name,
        weight=weight,
        backend=spec.backend,
        model=spec.model,
        fallbacks=None if spec.fallbacks is None else tuple(spec.fallbacks),
        system_prompt=spec.system_prompt,
        temperature=spec.temperature,
        max_tokens=spec.max_tokens,
        retrieval_k=spec.retrieval_k,
        version=str(version.version),
        retrieval_kinds=None if spec.retrieval_kinds is None else tuple(spec.retrieval_kinds),
        retrieval_documents=(
            None if spec.retrieval_documents is None else tuple(spec.retrieval_documents)
        ),
    )


def deployment_experiment(
    deployment: registry_pb2.VariantDeployment, salt: str
) -> Experiment | None:
    """Production (and canary) as an experiment; None without a production version. The
    canary is last, so growing its share only moves users from production to it."""
    if not deployment.HasField("production"):
        return None
    share = deployment.canary_share_percent if deployment.HasField("canary") else 0.0
    variants = [registry_variant(deployment.production, 100.0 - share)]
    if share > 0:
        variants.append(registry_variant(deployment.canary, share))
    return Experiment(tuple(variants), salt)


class RegistryVariantSource(VariantSource):
    """The registry's experiment, or `fallback`'s while the registry has none."""

    def __init__(
        self,
        persistence: PersistenceClient,
        fallback: VariantSource,
        *,
        salt: str,
        poll_seconds: float,
        call_timeout_seconds: float,
    ) -> None:
        self._persistence = persistence
        self._fallback = fallback
        self._salt = salt
        self._poll_seconds = poll_seconds
        self._timeout = call_timeout_seconds
        self._experiment: Experiment | None = None
        self._revision = 0
        self._refused_revision = 0
        self._pinned: dict[str, Variant] = {}
        self._task: asyncio.Task[None] | None = None
        # Checks that a new deployment can serve (builds its model chains); set by the router.
        self.validate: Callable[[tuple[Variant, ...]], None] = lambda _: None

    @property
    def revision(self) -> int:
        """The deployment revision in force (0: none seen)."""
        return self._revision

    def experiment(self) -> Experiment:
        return self._experiment or self._fallback.experiment()

    async def refresh(self) -> bool:
        """Asks for the deployment once; True when a new one was adopted. A failure is
        logged and leaves the current experiment in force."""
        try:
            response = await self._persistence.registry.GetVariantDeployment(
                variant_registry_pb2.GetVariantDeploymentRequest(known_revision=self._revision),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            _log.warning("variant registry unreachable", extra={"code": error.code().name})
            return False
        deployment = response.deployment
        if deployment.revision == self._revision:
            return False
        try:
            experiment = deployment_experiment(deployment, self._salt)
            if experiment is not None:
                self.validate(experiment.variants)
        except (VariantSpecError, VariantsConfigError, ValueError) as error:
            if deployment.revision != self._refused_revision:  # logged once per revision
                self._refused_revision = deployment.revision
                _log.error(
                    "variant registry deployment refused; keeping the current one",
                    extra={"revision": deployment.revision, "error": str(error)},
                )
            return False
        self._experiment = experiment
        self._revision = deployment.revision
        _log.info(
            "variant registry deployment adopted",
            extra={
                "revision": deployment.revision,
                "variants": list(experiment.names) if experiment else [],
            },
        )
        return True

    async def start(self) -> None:
        """One refresh now, then one every poll interval until `close()`."""
        await self.refresh()
        self._task = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_seconds)
            await self.refresh()

    async def close(self) -> None:
        """Stops polling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def pinned(self, identifier: str, timeout: float) -> Variant:
        """A stored version by NAME@VERSION; NotFound when there is none."""
        cached = self._pinned.get(identifier)
        if cached is not None:
            return cached
        try:
            parse_identifier(identifier)
        except VariantSpecError as error:
            raise errors.InvalidArgument("variant", str(error)) from None
        try:
            response = await self._persistence.registry.GetVariant(
                variant_registry_pb2.GetVariantRequest(
                    request=registry_pb2.GetVariantRequest(variant=identifier)
                ),
                timeout=min(timeout, self._timeout),
            )
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.NOT_FOUND:
                raise errors.NotFound(f"no variant {identifier}") from None
            raise errors.Unavailable("the variant registry is unavailable") from error
        variant = registry_variant(response.response.variant)
        if len(self._pinned) >= _PINNED_CACHE_MAX:
            self._pinned.clear()
        self._pinned[identifier] = variant
        return variant
