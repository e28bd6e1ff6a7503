"""Who is calling the Gateway: the `authorization: Bearer <token>` metadata is an API key when
the token looks like one (`cp_<key id>_<secret>`, gateway/auth.py) and an OIDC end-user JWT
otherwise (gateway/oidc.py). Every authentication failure is appended to the audit log (one
record each: who it claimed to be, from where, and why it failed; never the secret)."""

from __future__ import annotations

from typing import Any

import grpc

from chatplane import audit
from chatplane.common import errors
from chatplane.common.context import Principal
from chatplane.gateway.auth import ApiKeyAuthenticator, parse_api_key
from chatplane.gateway.oidc import OidcVerifier

API_KEY_PREFIX = "cp_"
"""Bearer tokens starting with this are API keys; anything else is treated as a JWT."""


def _bearer(metadata: tuple[tuple[str, str | bytes], ...]) -> str | None:
    """The bearer token of a well-formed authorization header, else None."""
    values = [v for k, v in metadata if k == "authorization"]
    if len(values) != 1 or not isinstance(values[0], str):
        return None
    scheme, _, token = values[0].partition(" ")
    return token if scheme.lower() == "bearer" and token else None


class Authenticator:
    """API keys always; JWTs when an OIDC issuer is configured (`oidc`)."""

    def __init__(self, api_keys: ApiKeyAuthenticator, oidc: OidcVerifier | None) -> None:
        self._api_keys = api_keys
        self._oidc = oidc

    @property
    def api_keys(self) -> ApiKeyAuthenticator:
        """The API-key half (its cache is dropped for keys revoked through this Gateway)."""
        return self._api_keys

    async def authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        """The caller's principal, or Unauthenticated (audited)."""
        metadata = tuple(context.invocation_metadata() or ())
        token = _bearer(metadata)
        try:
            if token is None or token.startswith(API_KEY_PREFIX):
                return await self._api_keys.authenticate(context)
            if self._oidc is None:
                raise errors.Unauthenticated(
                    "invalid api key (and this Gateway accepts no JWTs: no OIDC issuer is set)"
                )
            return await self._oidc.authenticate(token)
        except errors.Unauthenticated as failure:
            self._audit(failure, token, metadata, context)
            raise

    def _audit(
        self,
        failure: errors.Unauthenticated,
        token: str | None,
        metadata: tuple[tuple[str, str | bytes], ...],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        actor, tenant, credential = "anonymous", "", "credential/none"
        if token is not None and token.startswith(API_KEY_PREFIX):
            try:
                key_id, _ = parse_api_key(metadata)
            except errors.Unauthenticated:
                credential = "credential/api_key"
            else:
                actor, credential = f"key:{key_id}", f"api_key/{key_id}"
                tenant = self._api_keys.cached_tenant(key_id)
        elif token is not None:
            credential = "credential/jwt"
        audit.record(
            audit.AUTH_FAILURE,
            actor=actor,
            tenant_id=tenant,
            object=credential,
            outcome=audit.FAILURE,
            detail=failure.message,
            source=context.peer() or "",
        )
