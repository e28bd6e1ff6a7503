"""Per-call context carried in ContextVars: the request id and the authenticated principal.
Set by interceptors, read by logging and by the code that needs to know who is calling."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from chatplane.common import errors


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a user of a tenant."""

    tenant_id: str
    user_id: str
    key_id: str = ""
    # What the caller may do (chatplane.common.roles); an end user's key has only "chat".
    roles: frozenset[str] = frozenset({"chat"})


request_id_var: ContextVar[str] = ContextVar("request_id", default="")
principal_var: ContextVar[Principal | None] = ContextVar("principal", default=None)
# The tenant a call acts for on internal services (from the request's tenant_id / owner), for
# logs; the Gateway's authenticated principal takes precedence.
tenant_var: ContextVar[str] = ContextVar("tenant", default="")


def authenticated_principal() -> Principal:
    """The caller of this public call; Unauthenticated when there is none (the Gateway's
    interceptor authenticates every call of its public services before the handler runs)."""
    principal = principal_var.get()
    if principal is None:
        raise errors.Unauthenticated("not authenticated")
    return principal
