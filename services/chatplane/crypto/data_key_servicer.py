"""PersistenceService's data-key RPCs (docs/security.md "Encryption at rest"): hand a user's
wrapped data key to the Agent and the Gateway, which seal what they write to the message log,
and destroy it (crypto-shredding)."""

from __future__ import annotations

from chatplane.crypto.keyring import Keyring, StoreKeySource
from chatplane.persistence.protos import owner_of
from chatplane.persistence.servicer import Context
from chatplane.v1 import persistence_pb2


class DataKeyRpcs:
    """GetUserDataKey and DestroyUserDataKey, mixed into the servicer class, which sets
    `_keys` and `_keyring` (and serves the sealed store)."""

    _keys: StoreKeySource
    _keyring: Keyring

    async def GetUserDataKey(
        self, request: persistence_pb2.GetUserDataKeyRequest, context: Context
    ) -> persistence_pb2.GetUserDataKeyResponse:
        owner = owner_of(request.owner)
        key = await self._keys.fetch(owner.tenant_id, owner.user_id, request.create)
        if key is None:
            return persistence_pb2.GetUserDataKeyResponse(found=False)
        return persistence_pb2.GetUserDataKeyResponse(
            found=True, key_id=key.key_id, kek_id=key.kek_id, wrapped_key=key.wrapped_key
        )

    async def DestroyUserDataKey(
        self, request: persistence_pb2.DestroyUserDataKeyRequest, context: Context
    ) -> persistence_pb2.DestroyUserDataKeyResponse:
        owner = owner_of(request.owner)
        destroyed = await self._keyring.destroy_user_key(owner.tenant_id, owner.user_id)
        return persistence_pb2.DestroyUserDataKeyResponse(destroyed=destroyed)
