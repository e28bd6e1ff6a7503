"""API-key authentication: `authorization: Bearer cp_<key id>_<secret>` metadata becomes a
Principal. Keys are stored as SHA-256 of the secret (IdentityService.GetApiKey); records are
cached for a few seconds, so a revoked key stops working within that time."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from chatplane.common import errors
from chatplane.common.context import Principal
from chatplane.common.roles import DEFAULT_ROLES
from chatplane.common.timestamps import datetime_of
from chatplane.internal.v1 import identity_pb2
from chatplane.persistence.client import PersistenceClient

_MAX_CACHED = 10_000
_MAX_KEY_CHARS = 256


@dataclass(frozen=True, slots=True)
class _KeyRecord:
    principal: Principal | None  # None: unknown or revoked key
    secret_sha256: bytes
    expires: float
    # Wall-clock time (epoch seconds) when a rotated key stops working; None: no end.
    key_expires: float | None = None


def parse_api_key(metadata: tuple[tuple[str, str | bytes], ...]) -> tuple[str, str]:
    """(key id, secret) from the call's metadata, or Unauthenticated."""
    values = [v for k, v in metadata if k == "authorization"]
    if len(values) != 1 or not isinstance(values[0], str):
        raise errors.Unauthenticated("missing credentials: send 'authorization: Bearer <api key>'")
    scheme, _, token = values[0].partition(" ")
    if scheme.lower() != "bearer" or not token or len(token) > _MAX_KEY_CHARS:
        raise errors.Unauthenticated("malformed credentials: expected 'Bearer <api key>'")
    prefix, _, rest = token.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != "cp" or not key_id.replace("-", "").isalnum() or not secret:
        raise errors.Unauthenticated("invalid api key")
    return key_id, secret


class ApiKeyAuthenticator:
    """Verifies API keys against the system of record, with a short-lived cache."""

    def __init__(
        self,
        persistence: PersistenceClient,
        *,
        cache_seconds: float,
        call_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._persistence = persistence
        self._cache_seconds = cache_seconds
        self._call_timeout = call_timeout
        self._clock = clock
        self._cache: OrderedDict[str, _KeyRecord] = OrderedDict()

    async def authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        """The caller's principal, or Unauthenticated."""
        key_id, secret = parse_api_key(tuple(context.invocation_metadata() or ()))
        record = await self._record(key_id)
        digest = hashlib.sha256(secret.encode()).digest()
        if record.principal is None or not hmac.compare_digest(digest, record.secret_sha256):
            raise errors.Unauthenticated("invalid api key")
        if record.key_expires is not None and time.time() >= record.key_expires:
            raise errors.Unauthenticated("invalid api key (rotated, and its overlap has ended)")
        return record.principal

    def cached_tenant(self, key_id: str) -> str:
        """The tenant of a key this Gateway looked up recently ("" if unknown); for audit."""
        cached = self._cache.get(key_id)
        return "" if cached is None or cached.principal is None else cached.principal.tenant_id

    def forget(self, key_id: str) -> None:
        """Drops a key's cached record (revoked or rotated through this Gateway: the change
        holds here at once, on other replicas within cache_seconds)."""
        self._cache.pop(key_id, None)

    async def _record(self, key_id: str) -> _KeyRecord:
        now = self._clock()
        cached = self._cache.get(key_id)
        if cached is not None and cached.expires > now:
            return cached
        try:
            response = await self._persistence.identity.GetApiKey(
                identity_pb2.GetApiKeyRequest(key_id=key_id), timeout=self._call_timeout
            )
        except grpc.aio.AioRpcError as error:
            if error.code() is not grpc.StatusCode.NOT_FOUND:
                raise
            record = _KeyRecord(
                principal=None, secret_sha256=b"", expires=now + self._cache_seconds
            )
        else:
            principal = (
                None
                if response.revoked
                else Principal(
                    tenant_id=response.owner.tenant_id,
                    user_id=response.owner.user_id,
                    key_id=key_id,
                    roles=frozenset(response.roles) or DEFAULT_ROLES,
                )
            )
            record = _KeyRecord(
                principal=principal,
                secret_sha256=response.secret_sha256,
                expires=now + self._cache_seconds,
                key_expires=datetime_of(response.expire_time).timestamp()
                if response.HasField("expire_time")
                else None,
            )
        self._cache[key_id] = record
        self._cache.move_to_end(key_id)
        if len(self._cache) > _MAX_CACHED:
            self._cache.popitem(last=False)
        return record
