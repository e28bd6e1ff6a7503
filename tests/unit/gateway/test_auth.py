"""Parsing of the authorization metadata."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace
from typing import Any

import pytest

from chatplane.common import errors
from chatplane.gateway.auth import ApiKeyAuthenticator, parse_api_key
from chatplane.internal.v1 import identity_pb2
from chatplane.v1 import admin_resources_pb2


def test_bearer_key_is_split_into_id_and_secret() -> None:
    key_id, secret = parse_api_key((("authorization", "Bearer cp_1234-abcd_s3cr_et"),))
    assert (key_id, secret) == ("1234-abcd", "s3cr_et")


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "cp_a_b"),),
        (("authorization", "Basic cp_a_b"),),
        (("authorization", "Bearer "),),
        (("authorization", "Bearer xx_a_b"),),
        (("authorization", "Bearer cp_a"),),
        (("authorization", "Bearer cp_a!b_c"),),
        (("authorization", "Bearer cp_a_" + "x" * 300),),
        (("authorization", "Bearer cp_a_b"), ("authorization", "Bearer cp_c_d")),
        (("authorization-bin", b"\x00"),),
    ],
)
def test_malformed_credentials_are_unauthenticated(
    metadata: tuple[tuple[str, str | bytes], ...],
) -> None:
    with pytest.raises(errors.Unauthenticated):
        parse_api_key(metadata)


async def test_the_principal_carries_the_keys_roles() -> None:
    """ApiKeyAuthenticator turns the stored roles into Principal.roles (and a record without
    roles, from a Persistence that predates them, into the default chat role)."""

    secret = "ab" * 32
    records = {
        "k1": identity_pb2.GetApiKeyResponse(
            owner=admin_resources_pb2.Owner(tenant_id="t", user_id="u"),
            secret_sha256=hashlib.sha256(secret.encode()).digest(),
            roles=["admin", "operator"],
        ),
        "k2": identity_pb2.GetApiKeyResponse(
            owner=admin_resources_pb2.Owner(tenant_id="t", user_id="u"),
            secret_sha256=hashlib.sha256(secret.encode()).digest(),
        ),
    }

    async def get_api_key(request: Any, timeout: float) -> Any:
        return records[request.key_id]

    authenticator = ApiKeyAuthenticator(
        SimpleNamespace(identity=SimpleNamespace(GetApiKey=get_api_key)),  # type: ignore[arg-type]
        cache_seconds=1,
        call_timeout=1,
    )

    def context(key_id: str) -> Any:
        metadata = (("authorization", f"Bearer cp_{key_id}_{secret}"),)
        return SimpleNamespace(invocation_metadata=lambda: metadata)

    assert (await authenticator.authenticate(context("k1"))).roles == {"admin", "operator"}
    assert (await authenticator.authenticate(context("k2"))).roles == {"chat"}
