"""Roles: parsing what a key may do, and the check an RPC makes."""

from __future__ import annotations

import pytest

from chatplane.common import errors
from chatplane.common.context import Principal
from chatplane.common.roles import parse_roles, require_role


def test_no_roles_means_an_end_user() -> None:
    assert parse_roles(()) == frozenset({"chat"})
    assert Principal("t", "u").roles == frozenset({"chat"})


def test_named_roles_are_kept_and_unknown_ones_rejected() -> None:
    assert parse_roles(["admin", "operator"]) == frozenset({"admin", "operator"})
    with pytest.raises(errors.InvalidArgument) as raised:
        parse_roles(["chat", "root"])
    assert raised.value.field == "roles" and "'root'" in raised.value.description


def test_require_role_denies_a_principal_without_it() -> None:
    operator = Principal("t", "u", roles=frozenset({"operator"}))
    require_role(operator, "operator")
    with pytest.raises(errors.PermissionDenied):
        require_role(operator, "admin")
    # Roles are explicit: admin does not imply chat.
    with pytest.raises(errors.PermissionDenied):
        require_role(Principal("t", "u", roles=frozenset({"admin"})), "chat")
