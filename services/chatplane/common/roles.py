"""Roles a principal can hold, and the check an RPC makes before acting.

- `chat`: an end user; chats and reads their own conversations.
- `operator`: support staff of a tenant (handoff replies, reading the tenant's conversations).
- `admin`: manages the tenant (keys, erasure, exports, quotas, reports).

Roles are explicit: `admin` does not imply `operator` or `chat`; a key holds every role it
needs. A missing role is PERMISSION_DENIED (the caller is known, the action is not theirs)."""

from __future__ import annotations

from typing import Final

from chatplane.common import errors
from chatplane.common.context import Principal

CHAT: Final = "chat"
OPERATOR: Final = "operator"
ADMIN: Final = "admin"
ALL_ROLES: Final = frozenset({CHAT, OPERATOR, ADMIN})
DEFAULT_ROLES: Final = frozenset({CHAT})


def parse_roles(names: list[str] | tuple[str, ...]) -> frozenset[str]:
    """The roles named (empty: the default `chat`), or InvalidArgument on an unknown name."""
    if not names:
        return DEFAULT_ROLES
    unknown = sorted(set(names) - ALL_ROLES)
    if unknown:
        raise errors.InvalidArgument(
            "roles",
            f"unknown role(s) {', '.join(map(repr, unknown))}; known: admin, chat, operator",
        )
    return frozenset(names)


def require_role(principal: Principal, role: str) -> None:
    """Returns when `principal` holds `role`; otherwise PermissionDenied."""
    if role not in principal.roles:
        raise errors.PermissionDenied(f"this call needs the {role!r} role")
