"""VariantRegistryService (docs/registry.md): request checks and proto ⇄ domain around the
store's `VariantRegistry`. The Gateway's RegistryService (admins) and every Agent
(GetVariant, GetVariantDeployment) call it."""

from __future__ import annotations

from chatplane.common import errors
from chatplane.common.timestamps import timestamp_of
from chatplane.common.variant_spec import VariantSpecError, parse_spec
from chatplane.internal.v1 import variant_registry_pb2, variant_registry_pb2_grpc
from chatplane.persistence.protos import Context
from chatplane.persistence.store.variant_registry import (
    CHANGES_LIMIT_MAX,
    ChangeRecord,
    Deployment,
    Promotion,
    Stage,
    VariantRecord,
    VariantRegistry,
    parse_or_invalid,
)
from chatplane.v1 import registry_pb2

_STAGES = {
    Stage.CANDIDATE: registry_pb2.VARIANT_STAGE_CANDIDATE,
    Stage.CANARY: registry_pb2.VARIANT_STAGE_CANARY,
    Stage.PRODUCTION: registry_pb2.VARIANT_STAGE_PRODUCTION,
}
_MAX_TEXT_CHARS = 1000


def version_proto(record: VariantRecord, deployment: Deployment) -> registry_pb2.VariantVersion:
    """A stored version with its stage in `deployment`."""
    stage, share = deployment.stage_of(record.identifier)
    return registry_pb2.VariantVersion(
        name=record.name,
        version=record.version,
        spec_json=record.spec_json,
        spec_sha256=record.spec_sha256,
        created_by=record.created_by,
        create_time=timestamp_of(record.create_time),
        stage=_STAGES[stage],
        share_percent=share,
    )


def change_proto(change: ChangeRecord) -> registry_pb2.VariantChange:
    """A recorded change."""
    return registry_pb2.VariantChange(
        revision=change.revision,
        change_time=timestamp_of(change.change_time),
        actor=change.actor,
        action=change.action,
        stage=_STAGES[change.stage],
        from_variant=change.from_variant,
        to_variant=change.to_variant,
        from_share_percent=change.from_share_percent,
        to_share_percent=change.to_share_percent,
        reason=change.reason,
    )


def _text(value: str, field: str) -> str:
    if len(value) > _MAX_TEXT_CHARS or "\x00" in value:
        raise errors.InvalidArgument(field, f"must be at most {_MAX_TEXT_CHARS} characters")
    return value


class VariantRegistryServicer(variant_registry_pb2_grpc.VariantRegistryServiceServicer):
    """VariantRegistryService over the store's registry tables."""

    def __init__(self, registry: VariantRegistry) -> None:
        self._registry = registry

    async def PushVariant(
        self, request: variant_registry_pb2.PushVariantRequest, context: Context
    ) -> variant_registry_pb2.PushVariantResponse:
        try:
            spec = parse_spec(request.request.spec)
        except VariantSpecError as error:
            raise errors.InvalidArgument("request.spec", str(error)) from None
        record, created = await self._registry.push_variant(
            spec.name, spec.canonical_json(), spec.sha256(), _text(request.actor, "actor")
        )
        deployment = await self._registry.variant_deployment()
        return variant_registry_pb2.PushVariantResponse(
            response=registry_pb2.PushVariantResponse(
                variant=version_proto(record, deployment), created=created
            )
        )

    async def ListVariants(
        self, request: variant_registry_pb2.ListVariantsRequest, context: Context
    ) -> variant_registry_pb2.ListVariantsResponse:
        records = await self._registry.list_variants(
            _text(request.request.name, "request.name") or None
        )
        deployment = await self._registry.variant_deployment()
        return variant_registry_pb2.ListVariantsResponse(
            response=registry_pb2.ListVariantsResponse(
                variants=[version_proto(r, deployment) for r in records]
            )
        )

    async def GetVariant(
        self, request: variant_registry_pb2.GetVariantRequest, context: Context
    ) -> variant_registry_pb2.GetVariantResponse:
        name, version = parse_or_invalid(request.request.variant, "request.variant")
        record = await self._registry.get_variant(name, version)
        variant = version_proto(record, await self._registry.variant_deployment())
        return variant_registry_pb2.GetVariantResponse(
            response=registry_pb2.GetVariantResponse(variant=variant)
        )

    async def PromoteVariant(
        self, request: variant_registry_pb2.PromoteVariantRequest, context: Context
    ) -> variant_registry_pb2.PromoteVariantResponse:
        promote = request.request
        stages = {
            registry_pb2.VARIANT_STAGE_UNSPECIFIED: Stage.PRODUCTION,
            registry_pb2.VARIANT_STAGE_PRODUCTION: Stage.PRODUCTION,
            registry_pb2.VARIANT_STAGE_CANARY: Stage.CANARY,
        }
        stage = stages.get(promote.stage)
        if stage is None:
            raise errors.InvalidArgument("request.stage", "promote to canary or production")
        promotion = Promotion(
            variant=promote.variant,
            stage=stage,
            share_percent=promote.share_percent,
            actor=_text(request.actor, "actor"),
            reason=_text(promote.reason, "request.reason"),
        )
        try:
            change = await self._registry.promote_variant(promotion)
        except errors.InvalidArgument as error:
            # The store names the promotion's own fields; the caller sent them at `request.`.
            raise errors.InvalidArgument(f"request.{error.field}", error.description) from None
        return variant_registry_pb2.PromoteVariantResponse(
            response=registry_pb2.PromoteVariantResponse(change=change_proto(change))
        )

    async def RollbackVariant(
        self, request: variant_registry_pb2.RollbackVariantRequest, context: Context
    ) -> variant_registry_pb2.RollbackVariantResponse:
        change = await self._registry.rollback_variant(
            _text(request.actor, "actor"), _text(request.request.reason, "request.reason")
        )
        return variant_registry_pb2.RollbackVariantResponse(
            response=registry_pb2.RollbackVariantResponse(change=change_proto(change))
        )

    async def ListVariantChanges(
        self, request: variant_registry_pb2.ListVariantChangesRequest, context: Context
    ) -> variant_registry_pb2.ListVariantChangesResponse:
        limit = request.request.limit or 50
        if not 1 <= limit <= CHANGES_LIMIT_MAX:
            raise errors.InvalidArgument(
                "request.limit", f"must be 1-{CHANGES_LIMIT_MAX} (0 means 50)"
            )
        changes = await self._registry.variant_changes(limit)
        return variant_registry_pb2.ListVariantChangesResponse(
            response=registry_pb2.ListVariantChangesResponse(
                changes=[change_proto(c) for c in changes]
            )
        )

    async def GetVariantDeployment(
        self, request: variant_registry_pb2.GetVariantDeploymentRequest, context: Context
    ) -> variant_registry_pb2.GetVariantDeploymentResponse:
        deployment = await self._registry.variant_deployment()
        answer = registry_pb2.VariantDeployment(
            revision=deployment.revision, canary_share_percent=deployment.canary_share_percent
        )
        if deployment.revision != request.known_revision:
            for slot in ("production", "canary"):
                variant = getattr(deployment, slot)
                if variant:
                    name, version = parse_or_invalid(variant, slot)
                    record = await self._registry.get_variant(name, version)
                    getattr(answer, slot).CopyFrom(version_proto(record, deployment))
        return variant_registry_pb2.GetVariantDeploymentResponse(deployment=answer)
