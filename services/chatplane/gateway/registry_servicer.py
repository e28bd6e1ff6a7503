"""RegistryService (docs/registry.md), served by the Gateway: the variant registry for
admins of the tenants allowed to manage the deployment, through Persistence; and the
check of a Chat turn pinned to a registry version (admins only)."""

from __future__ import annotations

from typing import Any

import grpc

from chatplane import audit
from chatplane.common import errors
from chatplane.common.context import Principal, principal_var
from chatplane.common.deadlines import outbound_timeout
from chatplane.common.roles import ADMIN, require_role
from chatplane.common.settings import Settings
from chatplane.common.status_mapping import caller_field_errors
from chatplane.common.variant_spec import MAX_SPEC_CHARS, VariantSpecError, parse_identifier
from chatplane.gateway.admin.caller import audit_denied
from chatplane.internal.v1 import variant_registry_pb2
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import registry_pb2, registry_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]

REGISTRY_SERVICE = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name
# Audit actions of registry changes (the hash-chained audit log, docs/security.md), besides
# the registry's own change history.
VARIANT_PUSH = "variant.push"
VARIANT_PROMOTE = "variant.promote"
VARIANT_ROLLBACK = "variant.rollback"


def _caller() -> Principal:
    principal = principal_var.get()
    if principal is None:  # the interceptor authenticates every call
        raise errors.Unauthenticated("not authenticated")
    return principal


def require_pin(principal: Principal, variant: str) -> None:
    """A Chat turn pinned to NAME@VERSION: the caller must be an admin."""
    if not variant:
        return
    require_role(principal, ADMIN)
    try:
        parse_identifier(variant)
    except VariantSpecError as error:
        raise errors.InvalidArgument("variant", str(error)) from None


def _actor(principal: Principal) -> str:
    return f"{principal.tenant_id}/{audit.actor_of(principal)}"


def _audit(principal: Principal, context: Context, action: str, target: str, detail: str) -> None:
    audit.record(
        action,
        actor=audit.actor_of(principal),
        tenant_id=principal.tenant_id,
        object=f"variant/{target}",
        outcome=audit.SUCCESS,
        detail=detail,
        source=context.peer() or "",
    )


def _change_detail(change: registry_pb2.VariantChange) -> str:
    stage = registry_pb2.VariantStage.Name(change.stage).removeprefix("VARIANT_STAGE_").lower()
    return (
        f"revision {change.revision} {stage}: {change.from_variant or '-'} -> "
        f"{change.to_variant or '-'} ({change.to_share_percent:g}%)"
    )


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    """RegistryService over Persistence."""

    def __init__(self, *, settings: Settings, persistence: PersistenceClient) -> None:
        self._settings = settings
        self._persistence = persistence

    def _admin(self, context: Context, action: str) -> Principal:
        """An admin of a tenant that may manage the deployment (a refusal is audited)."""
        principal = _caller()
        try:
            require_role(principal, ADMIN)
            if principal.tenant_id not in self._settings.registry_admin_tenants:
                raise errors.PermissionDenied(
                    "the variant registry is managed by admins of the operations tenants"
                )
        except errors.PermissionDenied as denied:
            audit_denied(context, principal, f"RegistryService.{action}", denied)
            raise
        return principal

    def _timeout(self, context: Context) -> float:
        return outbound_timeout(context, self._settings.internal_call_timeout_seconds)

    async def PushVariant(
        self, request: registry_pb2.PushVariantRequest, context: Context
    ) -> registry_pb2.PushVariantResponse:
        principal = self._admin(context, "PushVariant")
        if len(request.spec) > MAX_SPEC_CHARS:
            raise errors.InvalidArgument("spec", f"must be at most {MAX_SPEC_CHARS} characters")
        with caller_field_errors("request."):
            response = await self._persistence.registry.PushVariant(
                variant_registry_pb2.PushVariantRequest(request=request, actor=_actor(principal)),
                timeout=self._timeout(context),
            )
        pushed = response.response
        if pushed.created:
            variant = f"{pushed.variant.name}@{pushed.variant.version}"
            _audit(principal, context, VARIANT_PUSH, variant, pushed.variant.spec_sha256)
        return pushed

    async def ListVariants(
        self, request: registry_pb2.ListVariantsRequest, context: Context
    ) -> registry_pb2.ListVariantsResponse:
        self._admin(context, "ListVariants")
        with caller_field_errors("request."):
            response = await self._persistence.registry.ListVariants(
                variant_registry_pb2.ListVariantsRequest(request=request),
                timeout=self._timeout(context),
            )
        return response.response

    async def GetVariant(
        self, request: registry_pb2.GetVariantRequest, context: Context
    ) -> registry_pb2.GetVariantResponse:
        self._admin(context, "GetVariant")
        with caller_field_errors("request."):
            response = await self._persistence.registry.GetVariant(
                variant_registry_pb2.GetVariantRequest(request=request),
                timeout=self._timeout(context),
            )
        return response.response

    async def PromoteVariant(
        self, request: registry_pb2.PromoteVariantRequest, context: Context
    ) -> registry_pb2.PromoteVariantResponse:
        principal = self._admin(context, "PromoteVariant")
        with caller_field_errors("request."):
            response = await self._persistence.registry.PromoteVariant(
                variant_registry_pb2.PromoteVariantRequest(
                    request=request, actor=_actor(principal)
                ),
                timeout=self._timeout(context),
            )
        change = response.response.change
        _audit(principal, context, VARIANT_PROMOTE, change.to_variant, _change_detail(change))
        return response.response

    async def RollbackVariant(
        self, request: registry_pb2.RollbackVariantRequest, context: Context
    ) -> registry_pb2.RollbackVariantResponse:
        principal = self._admin(context, "RollbackVariant")
        with caller_field_errors("request."):
            response = await self._persistence.registry.RollbackVariant(
                variant_registry_pb2.RollbackVariantRequest(
                    request=request, actor=_actor(principal)
                ),
                timeout=self._timeout(context),
            )
        change = response.response.change
        _audit(principal, context, VARIANT_ROLLBACK, change.from_variant, _change_detail(change))
        return response.response

    async def ListVariantChanges(
        self, request: registry_pb2.ListVariantChangesRequest, context: Context
    ) -> registry_pb2.ListVariantChangesResponse:
        self._admin(context, "ListVariantChanges")
        with caller_field_errors("request."):
            response = await self._persistence.registry.ListVariantChanges(
                variant_registry_pb2.ListVariantChangesRequest(request=request),
                timeout=self._timeout(context),
            )
        return response.response
