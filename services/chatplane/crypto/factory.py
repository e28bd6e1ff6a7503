"""The keyring of a process, from settings: over the store itself (Persistence) or over
Persistence's RPCs (Agent, Gateway)."""

from __future__ import annotations

from chatplane.common.settings import Settings
from chatplane.crypto.kek import DEV_KEK_FILE_NAME, KekRing, load_kek_ring
from chatplane.crypto.keyring import Keyring, StoreKeySource
from chatplane.crypto.persistence_key_source import PersistenceKeySource
from chatplane.persistence.client import PersistenceClient
from chatplane.persistence.store.base import ConversationStore


def kek_ring(settings: Settings) -> KekRing:
    """CHATPLANE_KEK, else CHATPLANE_KEK_FILE, else the development KEK in the data dir."""
    return load_kek_ring(
        settings.kek.get_secret_value(), settings.kek_file, settings.data_path(DEV_KEK_FILE_NAME)
    )


def store_key_source(settings: Settings, store: ConversationStore) -> StoreKeySource:
    """Wrapped keys read from and created in `store.data_keys`."""
    return StoreKeySource(store.data_keys, kek_ring(settings))


def store_keyring(settings: Settings, keys: StoreKeySource) -> Keyring:
    """The Persistence process's keyring."""
    return Keyring(keys, kek_ring(settings), settings.data_key_cache_seconds)


def rpc_keyring(settings: Settings, stub: PersistenceClient) -> Keyring:
    """The keyring of a process that reaches the keys through Persistence."""
    source = PersistenceKeySource(stub, settings.internal_call_timeout_seconds)
    return Keyring(source, kek_ring(settings), settings.data_key_cache_seconds)
