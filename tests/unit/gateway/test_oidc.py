"""OIDC settings and the mapping of a verified token's claims to a principal (the signature
checks themselves run end to end in tests/integration/test_identity.py)."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from chatplane.common import errors
from chatplane.common.settings import Settings
from chatplane.gateway.oidc import OidcConfig, OidcConfigError, OidcVerifier

KEY = ec.generate_private_key(ec.SECP256R1())
PUBLIC = jwt.PyJWK(
    {**jwt.algorithms.ECAlgorithm.to_jwk(KEY.public_key(), as_dict=True), "kid": "k1"}
)


class Keys:
    """A JWKS cache that knows one key."""

    async def key(self, kid: str | None) -> jwt.PyJWK:
        if kid != "k1":
            raise errors.Unauthenticated("unknown key")
        return PUBLIC


def settings(**values: Any) -> Settings:
    base = {
        "oidc_issuer": "https://id/",
        "oidc_audience": "chatplane",
        "oidc_jwks_url": "http://127.0.0.1:1/jwks",
    }
    return Settings(**{**base, **values})


def token(**claims: Any) -> str:
    now = int(time.time())
    body = {"iss": "https://id/", "aud": "chatplane", "sub": "ann", "exp": now + 60, **claims}
    return jwt.encode(body, KEY, algorithm="ES256", headers={"kid": "k1"})


def verifier(**values: Any) -> OidcVerifier:
    config = OidcConfig.from_settings(settings(**values))
    assert config is not None
    return OidcVerifier(config, Keys())  # type: ignore[arg-type]


def test_no_issuer_means_no_oidc_and_incomplete_settings_are_refused() -> None:
    assert OidcConfig.from_settings(Settings()) is None
    with pytest.raises(OidcConfigError, match="CHATPLANE_OIDC_AUDIENCE"):
        OidcConfig.from_settings(settings(oidc_audience=""))
    with pytest.raises(OidcConfigError, match="unknown role"):
        OidcConfig.from_settings(settings(oidc_role_mapping={"boss": "root"}))


async def test_claims_become_the_principal() -> None:
    principal = await verifier().authenticate(token(tenant="acme", scope="openid admin chat"))
    assert (principal.tenant_id, principal.user_id) == ("acme", "ann")
    assert principal.roles == frozenset({"admin", "chat"})


async def test_nested_roles_claim_mapping_and_fixed_tenant() -> None:
    keycloak = verifier(
        oidc_roles_claim="realm_access.roles",
        oidc_role_mapping={"support": "operator"},
        oidc_tenant="only-tenant",
        oidc_default_roles=[],
    )
    principal = await keycloak.authenticate(token(realm_access={"roles": ["support", "x"]}))
    assert principal.tenant_id == "only-tenant" and principal.roles == frozenset({"operator"})
    nobody = await keycloak.authenticate(token())
    assert nobody.roles == frozenset()


async def test_unusable_identities_are_unauthenticated() -> None:
    with pytest.raises(errors.Unauthenticated, match="tenant claim"):
        await verifier().authenticate(token(tenant=""))
    with pytest.raises(errors.Unauthenticated, match="longer than 256"):
        await verifier().authenticate(token(tenant="acme", sub="x" * 300))
    with pytest.raises(errors.Unauthenticated, match="malformed token: longer"):
        await verifier().authenticate("x" * 9000)
