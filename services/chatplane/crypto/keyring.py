"""Per-user data keys: get-or-create, seal/open helpers, and crypto-shredding.

A user's data key (256 random bits) is kept only wrapped by the key-encryption key, in the
system of record (`user_data_keys`). Processes unwrap it and keep it in memory for at most a
few seconds (`data_key_cache_seconds`), so a destroyed key stops being used on every replica
soon after `destroy_user_key`; a value whose key is gone fails with KeyDestroyed.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from chatplane.crypto import envelope
from chatplane.crypto.envelope import KeyDestroyed, SealedTextError
from chatplane.crypto.kek import KekError, KekRing

_log = logging.getLogger(__name__)

ERASED_TEXT = "[erased]"
"""What a read shows instead of a text whose owner's data key was destroyed (or that does not
open): the message is there, its content is gone."""

_CACHE_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class WrappedDataKey:
    """A user's data key as stored: encrypted by the KEK named `kek_id`."""

    tenant_id: str
    user_id: str
    key_id: str
    kek_id: str
    wrapped_key: bytes


def wrap_context(tenant_id: str, user_id: str, key_id: str) -> bytes:
    """What a wrapped data key is bound to: its owner and its id."""
    return "\x00".join(("chatplane-data-key/v1", tenant_id, user_id, key_id)).encode()


class DataKeyStore(Protocol):
    """The `user_data_keys` table of a system of record (both engines implement it)."""

    async def get_data_key(self, tenant_id: str, user_id: str) -> WrappedDataKey | None:
        """The user's wrapped data key, if there is one."""
        ...

    async def add_data_key(self, key: WrappedDataKey) -> WrappedDataKey:
        """Store `key` unless the user has one already; the one stored afterwards."""
        ...

    async def rewrap_data_key(self, key: WrappedDataKey) -> None:
        """Replace the wrapping of the user's key `key.key_id` (KEK rotation)."""
        ...

    async def delete_data_key(self, tenant_id: str, user_id: str) -> bool:
        """Delete the user's wrapped key; whether there was one."""
        ...


class WrappedKeySource(Protocol):
    """Where a keyring gets wrapped keys: the store itself (Persistence) or Persistence's
    GetUserDataKey RPC (Agent, Gateway)."""

    async def fetch(self, tenant_id: str, user_id: str, create: bool) -> WrappedDataKey | None:
        """The user's wrapped key; with `create`, one is made when there is none."""
        ...

    async def destroy(self, tenant_id: str, user_id: str) -> bool:
        """Delete the user's wrapped key; whether there was one."""
        ...


class StoreKeySource:
    """Wrapped keys straight from the system of record: creates missing keys (wrapped by the
    current KEK) and re-wraps keys of a previous KEK on first use (rotation)."""

    def __init__(self, store: DataKeyStore, keks: KekRing) -> None:
        self._store = store
        self._keks = keks

    async def fetch(self, tenant_id: str, user_id: str, create: bool) -> WrappedDataKey | None:
        stored = await self._store.get_data_key(tenant_id, user_id)
        if stored is None:
            if not create:
                return None
            key_id = secrets.token_hex(8)
            kek = self._keks.current
            wrapped = kek.wrap(AESGCM.generate_key(256), wrap_context(tenant_id, user_id, key_id))
            return await self._store.add_data_key(
                WrappedDataKey(tenant_id, user_id, key_id, kek.key_id, wrapped)
            )
        if stored.kek_id != self._keks.current.key_id:
            stored = await self._rewrap(stored)
        return stored

    async def destroy(self, tenant_id: str, user_id: str) -> bool:
        return await self._store.delete_data_key(tenant_id, user_id)

    async def _rewrap(self, stored: WrappedDataKey) -> WrappedDataKey:
        context = wrap_context(stored.tenant_id, stored.user_id, stored.key_id)
        plain = self._keks.get(stored.kek_id).unwrap(stored.wrapped_key, context)
        current = self._keks.current
        rewrapped = WrappedDataKey(
            stored.tenant_id,
            stored.user_id,
            stored.key_id,
            current.key_id,
            current.wrap(plain, context),
        )
        await self._store.rewrap_data_key(rewrapped)
        return rewrapped


@dataclass(frozen=True, slots=True)
class _DataKey:
    key_id: str
    aead: AESGCM


class Keyring:
    """Seals and opens a user's personal text with their data key."""

    def __init__(
        self,
        source: WrappedKeySource,
        keks: KekRing,
        cache_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._keks = keks
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, _DataKey | None]] = {}

    async def seal(self, tenant_id: str, user_id: str, record_id: str, text: str) -> str:
        """`text` sealed for its owner and record ("" stays ""). Text that merely looks
        sealed is sealed too: it opens back to exactly what was written."""
        if not text:
            return text
        key = await self._key(tenant_id, user_id, create=True)
        assert key is not None  # create=True always yields a key
        return envelope.seal(key.aead, key.key_id, tenant_id, user_id, record_id, text)

    async def open(
        self, tenant_id: str, user_id: str, value: str, record_id: str | None = None
    ) -> str:
        """The text of `value` (a value not sealed is returned as it is: written before
        encryption at rest). KeyDestroyed when its key is gone, TamperedText when it does not
        authenticate or belongs to another record than `record_id`."""
        if not envelope.is_sealed(value):
            return value
        parts = envelope.parse(value)
        if record_id is not None and parts.record_id != record_id:
            raise envelope.TamperedText("sealed value of another record")
        key = await self._key(tenant_id, user_id, create=False)
        if key is None or key.key_id != parts.key_id:
            # A key created (or re-created) elsewhere since it was cached: ask once more.
            key = await self._key(tenant_id, user_id, create=False, fresh=True)
        if key is None or key.key_id != parts.key_id:
            raise KeyDestroyed("the owner's data key was destroyed")
        return envelope.open_parts(key.aead, parts, tenant_id, user_id)

    async def open_or_erased(
        self, tenant_id: str, user_id: str, value: str, record_id: str | None = None
    ) -> str:
        """Like `open`, but a value that cannot be opened reads as ERASED_TEXT."""
        try:
            return await self.open(tenant_id, user_id, value, record_id)
        except KeyDestroyed:
            return ERASED_TEXT
        except SealedTextError as error:
            _log.error(
                "a sealed text does not open",
                extra={"tenant_id": tenant_id, "record_id": record_id, "error": str(error)},
            )
            return ERASED_TEXT

    async def destroy_user_key(self, tenant_id: str, user_id: str) -> bool:
        """Crypto-shredding: delete the user's wrapped data key, making every sealed copy of
        their text (database rows, log records, backups) unreadable. Whether one existed.
        Other replicas stop using their cached copy within `data_key_cache_seconds`."""
        self._cache.pop((tenant_id, user_id), None)
        destroyed = await self._source.destroy(tenant_id, user_id)
        self._cache.pop((tenant_id, user_id), None)
        return destroyed

    async def _key(
        self, tenant_id: str, user_id: str, create: bool, fresh: bool = False
    ) -> _DataKey | None:
        now = self._clock()
        cached = self._cache.get((tenant_id, user_id))
        # A cached "no key" does not answer a caller who wants one created.
        if not fresh and cached is not None and cached[0] > now and (cached[1] or not create):
            return cached[1]
        wrapped = await self._source.fetch(tenant_id, user_id, create)
        key = None if wrapped is None else self._unwrap(wrapped)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
        self._cache[(tenant_id, user_id)] = (now + self._cache_seconds, key)
        return key

    def _unwrap(self, wrapped: WrappedDataKey) -> _DataKey:
        context = wrap_context(wrapped.tenant_id, wrapped.user_id, wrapped.key_id)
        try:
            plain = self._keks.get(wrapped.kek_id).unwrap(wrapped.wrapped_key, context)
        except KekError:
            _log.error("a data key does not unwrap", extra={"kek_id": wrapped.kek_id})
            raise
        return _DataKey(wrapped.key_id, AESGCM(plain))
