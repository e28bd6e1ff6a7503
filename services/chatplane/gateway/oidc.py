"""End-user JWTs from an OIDC provider: a bearer token that is not an API key is verified
here (signature by the provider's JWKS with RS256 or ES256 only, issuer, audience, expiry,
not-before) and mapped to a Principal: the tenant from a configured claim (or one fixed
tenant), the user from `sub`, the roles from the scope/roles claim through a mapping. Every
way a token can fail is Unauthenticated with a message that says which check failed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import jwt

from chatplane.common import errors
from chatplane.common.context import Principal
from chatplane.common.roles import ALL_ROLES
from chatplane.common.settings import Settings
from chatplane.gateway.jwks import ALGORITHMS, JwksCache

MAX_TOKEN_CHARS: Final = 8192
_MAX_ID_CHARS = 256
_FALLBACK_CLAIMS: Final = {"scope": "scp"}


class OidcConfigError(errors.ConfigError):
    """The OIDC settings are incomplete or name unknown roles."""

    heading = "invalid OIDC configuration"


@dataclass(frozen=True, slots=True)
class OidcConfig:
    """What a token must be and how its claims become a principal."""

    issuer: str
    audience: str
    jwks_url: str
    tenant_claim: str
    fixed_tenant: str
    roles_claim: str
    role_mapping: Mapping[str, str]
    default_roles: frozenset[str]
    leeway_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> OidcConfig | None:
        """The configuration, None when no issuer is set, or OidcConfigError."""
        if not settings.oidc_issuer:
            return None
        missing = [
            name
            for name, value in (
                ("CHATPLANE_OIDC_AUDIENCE", settings.oidc_audience),
                ("CHATPLANE_OIDC_JWKS_URL", settings.oidc_jwks_url),
            )
            if not value
        ]
        if missing:
            raise OidcConfigError(f"CHATPLANE_OIDC_ISSUER is set: also set {', '.join(missing)}")
        if not settings.oidc_tenant and not settings.oidc_tenant_claim:
            raise OidcConfigError("set CHATPLANE_OIDC_TENANT_CLAIM or CHATPLANE_OIDC_TENANT")
        unknown = sorted(
            (set(settings.oidc_role_mapping.values()) | set(settings.oidc_default_roles))
            - ALL_ROLES
        )
        if unknown:
            raise OidcConfigError(
                f"OIDC role mapping names unknown role(s) {unknown}; known: {sorted(ALL_ROLES)}"
            )
        return cls(
            issuer=settings.oidc_issuer,
            audience=settings.oidc_audience,
            jwks_url=settings.oidc_jwks_url,
            tenant_claim=settings.oidc_tenant_claim,
            fixed_tenant=settings.oidc_tenant,
            roles_claim=settings.oidc_roles_claim,
            role_mapping=dict(settings.oidc_role_mapping),
            default_roles=frozenset(settings.oidc_default_roles),
            leeway_seconds=settings.oidc_leeway_seconds,
        )


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by name, or by a dotted path into nested objects (None when absent)."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _identifier(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise errors.Unauthenticated(f"token has no {what}")
    if len(value) > _MAX_ID_CHARS:
        raise errors.Unauthenticated(f"token's {what} is longer than {_MAX_ID_CHARS} characters")
    return value


class OidcVerifier:
    """Verifies tokens of one issuer against its JWKS."""

    def __init__(self, config: OidcConfig, jwks: JwksCache) -> None:
        self._config = config
        self._jwks = jwks

    @property
    def issuer(self) -> str:
        """The accepted issuer."""
        return self._config.issuer

    async def authenticate(self, token: str) -> Principal:
        """The token's principal, or Unauthenticated saying which check failed."""
        if len(token) > MAX_TOKEN_CHARS:
            raise errors.Unauthenticated(f"malformed token: longer than {MAX_TOKEN_CHARS} chars")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise errors.Unauthenticated("malformed token: not a signed JWT") from None
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise errors.Unauthenticated(
                f"token algorithm {str(algorithm)[:16]!r} is not accepted (RS256 or ES256 only)"
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise errors.Unauthenticated("malformed token: kid is not a string")
        key = await self._jwks.key(kid)
        if key.algorithm_name != algorithm:
            raise errors.Unauthenticated(
                f"token algorithm {algorithm} does not match its key ({key.algorithm_name})"
            )
        claims = self._verified_claims(token, key, algorithm)
        return self._principal(claims)

    def _verified_claims(self, token: str, key: jwt.PyJWK, algorithm: str) -> dict[str, Any]:
        config = self._config
        try:
            return jwt.decode(
                token,
                key=key.key,
                algorithms=[algorithm],
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise errors.Unauthenticated("token expired") from None
        except jwt.ImmatureSignatureError:
            raise errors.Unauthenticated("token not yet valid (nbf or iat in the future)") from None
        except jwt.InvalidIssuerError:
            raise errors.Unauthenticated("token issuer is not accepted") from None
        except jwt.InvalidAudienceError:
            raise errors.Unauthenticated("token audience is not accepted") from None
        except jwt.MissingRequiredClaimError as error:
            raise errors.Unauthenticated(f"token has no {error.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise errors.Unauthenticated("token signature does not verify") from None
        except jwt.InvalidAlgorithmError:
            raise errors.Unauthenticated("token algorithm is not accepted") from None
        except jwt.DecodeError:
            raise errors.Unauthenticated("malformed token") from None
        except jwt.PyJWTError as error:
            raise errors.Unauthenticated(f"invalid token: {str(error)[:120]}") from None

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        config = self._config
        user = _identifier(claims.get("sub"), "subject (sub)")
        if config.fixed_tenant:
            tenant = config.fixed_tenant
        else:
            tenant = _identifier(
                _claim(claims, config.tenant_claim), f"tenant claim {config.tenant_claim!r}"
            )
        return Principal(tenant_id=tenant, user_id=user, roles=self._roles(claims))

    def _roles(self, claims: Mapping[str, Any]) -> frozenset[str]:
        config = self._config
        value = _claim(claims, config.roles_claim)
        if value is None and config.roles_claim in _FALLBACK_CLAIMS:
            value = _claim(claims, _FALLBACK_CLAIMS[config.roles_claim])
        if isinstance(value, str):
            names = value.split()
        elif isinstance(value, list):
            names = [v for v in value if isinstance(v, str)]
        else:
            names = []
        roles = frozenset(config.role_mapping[n] for n in names if n in config.role_mapping)
        return roles or config.default_roles
