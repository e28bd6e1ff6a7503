"""The caller of a role-restricted public call (Admin, Operator, Registry): the principal, who
must hold the RPC's role (a refusal is audited as `authz.denied`), and the audit actor the
Persistence calls it makes carry."""

from __future__ import annotations

from typing import Any

import grpc

from chatplane import audit
from chatplane.common import errors
from chatplane.common.context import Principal, authenticated_principal, request_id_var
from chatplane.common.roles import ADMIN, require_role
from chatplane.internal.v1 import audit_pb2

Context = grpc.aio.ServicerContext[Any, Any]


def admin_principal(context: Context, action: str) -> Principal:
    """The caller of `AdminService.<action>`, who must hold `admin`."""
    return principal_with_role(context, ADMIN, f"AdminService.{action}")


def principal_with_role(context: Context, role: str, rpc: str) -> Principal:
    """The caller of `rpc` ("Service.Method"), who must hold `role` (a refusal is audited)."""
    principal = authenticated_principal()
    try:
        require_role(principal, role)
    except errors.PermissionDenied as denied:
        audit_denied(context, principal, rpc, denied)
        raise
    return principal


def audit_denied(
    context: Context, principal: Principal, rpc: str, denied: errors.PermissionDenied
) -> None:
    """Records a refused call in the audit chain."""
    audit.record(
        audit.AUTHZ_DENIED,
        actor=audit.actor_of(principal),
        tenant_id=principal.tenant_id,
        object=f"rpc/{rpc}",
        outcome=audit.DENIED,
        detail=denied.message,
        source=context.peer() or "",
    )


def audit_actor(principal: Principal, context: Context) -> audit_pb2.AuditActor:
    """Who did it, as a Persistence request records it in the audit chain."""
    return audit_pb2.AuditActor(
        actor=audit.actor_of(principal),
        source=context.peer() or "",
        request_id=request_id_var.get(),
    )
