"""The OIDC provider's signing keys (JWKS), fetched over HTTP with aiohttp (never blocking the
event loop) and cached: refetched in the background once older than `cache_seconds`, and at
once when a token names a key id the cache does not know (a rotation at the provider); either
at most once per `min_refresh_seconds`, so tokens with made-up key ids cannot hammer the
provider.
Concurrent callers share one fetch. When the provider cannot be reached, the last keys fetched
keep working; with none fetched yet, verification is Unavailable (not the caller's fault)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import aiohttp
import jwt

from chatplane.common import errors

_log = logging.getLogger(__name__)

ALGORITHMS: Final = ("RS256", "ES256")
"""The only signature algorithms accepted (asymmetric: the Gateway holds no signing secret)."""

_MAX_JWKS_BYTES = 1024 * 1024


class JwksError(Exception):
    """The JWKS could not be fetched or holds no usable key."""


class JwksCache:
    """The keys at `url`, by key id."""

    def __init__(
        self,
        url: str,
        *,
        cache_seconds: float,
        min_refresh_seconds: float,
        timeout_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._cache_seconds = cache_seconds
        self._min_refresh_seconds = min_refresh_seconds
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._unnamed: list[jwt.PyJWK] = []
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._refresh: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.fetches = 0

    async def close(self) -> None:
        """Closes the HTTP session."""
        if self._refresh is not None and not self._refresh.done():
            self._refresh.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def key(self, kid: str | None) -> jwt.PyJWK:
        """The signing key named `kid` (a token without a kid: the only key, if there is just
        one); Unauthenticated for a key the provider does not publish."""
        now = self._clock()
        may_refetch = (
            self._attempted_at is None or now - self._attempted_at >= self._min_refresh_seconds
        )
        found = self._lookup(kid)
        if found is not None:
            assert self._fetched_at is not None
            if may_refetch and now - self._fetched_at >= self._cache_seconds:
                # Expired: refreshed in the background; the cached key serves this call.
                self._start_refresh()
            return found
        if may_refetch:
            await asyncio.shield(self._start_refresh())
            found = self._lookup(kid)
        if self._fetched_at is None:
            raise errors.Unavailable("the identity provider's signing keys cannot be fetched")
        if found is None:
            if kid is None:
                raise errors.Unauthenticated("token has no key id (kid)")
            raise errors.Unauthenticated(f"token signed with an unknown key (kid {kid[:64]!r})")
        return found

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            every = [*self._keys.values(), *self._unnamed]
            return every[0] if len(every) == 1 else None
        return self._keys.get(kid)

    def _start_refresh(self) -> asyncio.Task[None]:
        """The fetch under way, or a new one (awaited shielded: a caller that gives up must
        not cancel the fetch others wait for). Failures keep the keys there were."""
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.create_task(self._fetch(), name="jwks-fetch")
        return self._refresh

    async def _fetch(self) -> None:
        self._attempted_at = self._clock()
        self.fetches += 1
        try:
            document = await self._get()
            keys, unnamed = _usable_keys(document)
        except (JwksError, aiohttp.ClientError, TimeoutError, ValueError) as error:
            _log.warning(
                "JWKS fetch failed",
                extra={"url": self._url, "error": repr(error), "cached_keys": len(self._keys)},
            )
            return
        self._keys, self._unnamed = keys, unnamed
        self._fetched_at = self._clock()
        _log.info("JWKS fetched", extra={"url": self._url, "keys": len(keys) + len(unnamed)})

    async def _get(self) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        async with self._session.get(self._url, allow_redirects=False) as response:
            if response.status != 200:
                raise JwksError(f"HTTP {response.status}")
            body = await response.content.read(_MAX_JWKS_BYTES + 1)
            if len(body) > _MAX_JWKS_BYTES:
                raise JwksError("JWKS larger than 1 MiB")
            return json.loads(body)


def _usable_keys(document: Any) -> tuple[dict[str, jwt.PyJWK], list[jwt.PyJWK]]:
    """The signature keys of a JWKS document for RS256/ES256, by kid (and those without)."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError("not a JWK Set")
    keys: dict[str, jwt.PyJWK] = {}
    unnamed: list[jwt.PyJWK] = []
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("alg") not in (None, *ALGORITHMS) or entry.get("kty") not in ("RSA", "EC"):
            continue
        try:
            key = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue  # an unusable key (another curve, broken numbers): skip it
        if key.algorithm_name not in ALGORITHMS:
            continue
        if isinstance(entry.get("kid"), str):
            keys[entry["kid"]] = key
        else:
            unnamed.append(key)
    if not keys and not unnamed:
        raise JwksError("no RS256/ES256 signature key in the JWK Set")
    return keys, unnamed
