"""The JWKS cache against a real HTTP server on loopback, with a clock the test moves: one
fetch for many callers, refetch on an unknown kid (throttled), background refresh after the
TTL, the last keys kept while the provider is down, Unavailable when none was ever fetched."""

from __future__ import annotations

import asyncio
import socket

import pytest

from chatplane.common import errors
from chatplane.gateway.jwks import JwksCache
from tests.integration.oidc_provider import SigningKey, running_provider


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cache(url: str, clock: Clock) -> JwksCache:
    return JwksCache(url, cache_seconds=300, min_refresh_seconds=10, timeout_seconds=2, clock=clock)


async def test_fetches_once_refetches_throttled_and_keeps_keys_when_down() -> None:
    first, second = SigningKey.rsa(), SigningKey.ec()
    clock = Clock()
    async with running_provider(first) as provider:
        keys = cache(provider.url, clock)
        try:
            found = await asyncio.gather(*(keys.key(first.kid) for _ in range(20)))
            assert {k.key_id for k in found} == {first.kid} and provider.fetches == 1
            # The provider rotates: within 10 s of the last fetch a new kid is not looked for,
            # after that one refetch finds it, and the next 10 s are throttled again.
            provider.published = [first, second]
            with pytest.raises(errors.Unauthenticated, match="unknown key"):
                await keys.key(second.kid)
            assert provider.fetches == 1
            clock.now += 11
            assert (await keys.key(second.kid)).algorithm_name == "ES256"
            assert provider.fetches == 2
            with pytest.raises(errors.Unauthenticated, match="unknown key"):
                await keys.key("invented")
            assert provider.fetches == 2
            clock.now += 11
            with pytest.raises(errors.Unauthenticated, match="unknown key"):
                await keys.key("invented")
            assert provider.fetches == 3
            # Past the TTL the cached key still answers; a refresh runs in the background.
            clock.now += 301
            assert (await keys.key(first.kid)).key_id == first.kid
            for _ in range(100):
                if provider.fetches == 4:
                    break
                await asyncio.sleep(0.01)
            assert provider.fetches == 4
        finally:
            url = provider.url
    # The provider is gone: the last keys keep working.
    clock.now += 400
    assert (await keys.key(first.kid)).key_id == first.kid
    await keys.close()
    assert url


async def test_never_fetched_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    keys = cache(f"http://127.0.0.1:{port}/jwks.json", Clock())
    try:
        with pytest.raises(errors.Unavailable, match="cannot be fetched"):
            await keys.key("any")
        assert keys.fetches == 1
        with pytest.raises(errors.Unavailable):
            await keys.key("any")
        assert keys.fetches == 1  # throttled
    finally:
        await keys.close()
