"""The sealed text envelope, the KEK ring and the keyring over a real SQLite store: tampering,
a wrong owner or record, KEK rotation, crypto-shredding and the key cache."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from chatplane.crypto import envelope
from chatplane.crypto.envelope import KeyDestroyed, TamperedText
from chatplane.crypto.kek import (
    KekConfigError,
    KekError,
    KekRing,
    load_kek_ring,
    new_kek_line,
    parse_keks,
)
from chatplane.crypto.keyring import ERASED_TEXT, Keyring, StoreKeySource
from chatplane.persistence.store.postgres import PostgresConversationStore

MESSAGE = "11111111-1111-4111-8111-111111111111"
OTHER = "22222222-2222-4222-8222-222222222222"


@pytest.fixture
async def store(postgres_database: str) -> AsyncIterator[PostgresConversationStore]:
    opened = await PostgresConversationStore.open(postgres_database, pool_max_size=4)
    yield opened
    await opened.close()


def _ring(*lines: str) -> KekRing:
    return parse_keks("\n".join(lines), "test")


def _keyring(store: PostgresConversationStore, keks: KekRing, cache: float = 5.0) -> Keyring:
    return Keyring(StoreKeySource(store.data_keys, keks), keks, cache)


async def test_seal_then_open_round_trips_and_hides_the_text(
    store: PostgresConversationStore,
) -> None:
    keyring = _keyring(store, _ring(new_kek_line("k1")))
    sealed = await keyring.seal("t", "alice", MESSAGE, "my card is 5500 0000 0000 0004 ✓")
    assert envelope.is_sealed(sealed)
    assert "5500" not in sealed and "card" not in sealed
    assert await keyring.open("t", "alice", sealed, MESSAGE) == "my card is 5500 0000 0000 0004 ✓"
    # Sealing twice gives different ciphertexts (a fresh nonce each time).
    assert await keyring.seal("t", "alice", MESSAGE, "x") != await keyring.seal(
        "t", "alice", MESSAGE, "x"
    )
    # Text that only looks sealed is sealed all the same, and opens to what was written.
    lookalike = envelope.SEALED_PREFIX + "abc.def.ghi"
    sealed_lookalike = await keyring.seal("t", "alice", MESSAGE, lookalike)
    assert sealed_lookalike != lookalike
    assert await keyring.open("t", "alice", sealed_lookalike, MESSAGE) == lookalike
    # Empty and unsealed (pre-encryption) values pass through.
    assert await keyring.seal("t", "alice", MESSAGE, "") == ""
    assert await keyring.open("t", "alice", "written before", MESSAGE) == "written before"


async def test_tampered_or_misbound_values_do_not_open(store: PostgresConversationStore) -> None:
    keyring = _keyring(store, _ring(new_kek_line("k1")))
    sealed = await keyring.seal("t", "alice", MESSAGE, "secret")
    await keyring.seal("t", "bob", MESSAGE, "bob's")  # bob has a key too
    flipped = sealed[:-3] + ("A" if sealed[-3] != "A" else "B") + sealed[-2:]
    with pytest.raises(TamperedText):
        await keyring.open("t", "alice", flipped, MESSAGE)
    # Another record id in the envelope (a row's text moved to another row).
    moved = sealed.replace(MESSAGE, OTHER)
    with pytest.raises(TamperedText):
        await keyring.open("t", "alice", moved, None)
    with pytest.raises(TamperedText):
        await keyring.open("t", "alice", sealed, OTHER)
    # Another owner: bob's key has another id, so alice's text is not his.
    with pytest.raises(KeyDestroyed):
        await keyring.open("t", "bob", sealed, MESSAGE)
    with pytest.raises(TamperedText):
        await keyring.open("t", "alice", envelope.SEALED_PREFIX + "garbage", MESSAGE)
    assert await keyring.open_or_erased("t", "alice", flipped, MESSAGE) == ERASED_TEXT


def test_wrong_associated_data_fails_at_the_envelope() -> None:
    aead = AESGCM(AESGCM.generate_key(256))
    sealed = envelope.seal(aead, "kid", "t", "alice", MESSAGE, "hello")
    parts = envelope.parse(sealed)
    assert envelope.open_parts(aead, parts, "t", "alice") == "hello"
    for tenant, user in (("t2", "alice"), ("t", "bob")):
        with pytest.raises(TamperedText):
            envelope.open_parts(aead, parts, tenant, user)


async def test_destroy_user_key_shreds_only_that_user(store: PostgresConversationStore) -> None:
    keyring = _keyring(store, _ring(new_kek_line("k1")))
    alice = [await keyring.seal("t", "alice", MESSAGE, f"alice {i}") for i in range(3)]
    bob = await keyring.seal("t", "bob", MESSAGE, "bob")
    assert await keyring.destroy_user_key("t", "alice") is True
    assert await keyring.destroy_user_key("t", "alice") is False
    for value in alice:
        with pytest.raises(KeyDestroyed):
            await keyring.open("t", "alice", value, MESSAGE)
        assert await keyring.open_or_erased("t", "alice", value, MESSAGE) == ERASED_TEXT
    assert await keyring.open("t", "bob", bob, MESSAGE) == "bob"
    # A new message of alice's gets a new key; the old ones stay unreadable.
    fresh = await keyring.seal("t", "alice", MESSAGE, "after")
    assert await keyring.open("t", "alice", fresh, MESSAGE) == "after"
    with pytest.raises(KeyDestroyed):
        await keyring.open("t", "alice", alice[0], MESSAGE)


async def test_destruction_reaches_another_replica_after_its_cache(
    store: PostgresConversationStore,
) -> None:
    keks = _ring(new_kek_line("k1"))
    now = [0.0]
    here = Keyring(StoreKeySource(store.data_keys, keks), keks, 5.0)
    there = Keyring(StoreKeySource(store.data_keys, keks), keks, 5.0, clock=lambda: now[0])
    sealed = await here.seal("t", "alice", MESSAGE, "hi")
    assert await there.open("t", "alice", sealed, MESSAGE) == "hi"  # cached there now
    await here.destroy_user_key("t", "alice")
    assert await there.open("t", "alice", sealed, MESSAGE) == "hi"  # within the cache time
    now[0] = 5.1
    with pytest.raises(KeyDestroyed):
        await there.open("t", "alice", sealed, MESSAGE)


async def test_kek_rotation_rewraps_and_old_kek_can_then_go(
    store: PostgresConversationStore,
) -> None:
    old_line, new_line = new_kek_line("old"), new_kek_line("new")
    before = _keyring(store, _ring(old_line))
    sealed = await before.seal("t", "alice", MESSAGE, "kept across rotation")
    assert (await store.data_keys.get_data_key("t", "alice")).kek_id == "old"  # type: ignore[union-attr]
    # New KEK first, old one kept for unwrapping: the key is re-wrapped on first use.
    during = _keyring(store, _ring(new_line, old_line))
    assert await during.open("t", "alice", sealed, MESSAGE) == "kept across rotation"
    rewrapped = await store.data_keys.get_data_key("t", "alice")
    assert rewrapped is not None and rewrapped.kek_id == "new"
    # The data itself never changed; the old KEK is no longer needed.
    after = _keyring(store, _ring(new_line))
    assert await after.open("t", "alice", sealed, MESSAGE) == "kept across rotation"
    # Without the KEK that wrapped it, a key does not unwrap: a clear error, not garbage.
    stranger = _keyring(store, _ring(new_kek_line("new")))
    with pytest.raises(KekError, match="does not open"):
        await stranger.open("t", "alice", sealed, MESSAGE)
    unknown = _keyring(store, _ring(new_kek_line("other")))
    with pytest.raises(KekError, match="not configured"):
        await unknown.open("t", "alice", sealed, MESSAGE)


def test_kek_sources_and_the_dev_file(tmp_path: Path) -> None:
    line = new_kek_line("prod-1")
    assert load_kek_ring(line, None, tmp_path / "unused").current.key_id == "prod-1"
    file = tmp_path / "kek"
    file.write_text(f"# comment\n{line}\n{new_kek_line('prod-0')}\n")
    ring = load_kek_ring("", file, tmp_path / "unused")
    assert ring.current.key_id == "prod-1" and ring.get("prod-0").key_id == "prod-0"
    dev = tmp_path / "data" / "kek.key"
    first = load_kek_ring("", None, dev)
    assert dev.stat().st_mode & 0o777 == 0o600
    assert load_kek_ring("", None, dev).current.key_id == first.current.key_id == "dev-1"
    assert not (tmp_path / "unused").exists()
    for bad in ("no-colon", "id:not base64!", "id:" + "QUJD", ""):
        with pytest.raises(KekConfigError):
            parse_keks(bad, "test")
    with pytest.raises(KekConfigError, match="cannot read"):
        load_kek_ring("", tmp_path / "missing", dev)
