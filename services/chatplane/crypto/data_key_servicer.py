"""DataKeyService (docs/security.md "Encryption at rest"): hand a user's
wrapped data key to the Agent and the Gateway, which seal what they write to the message log,
and destroy it (crypto-shredding)."""

from __future__ import annotations

from chatplane.crypto.keyring import Keyring, StoreKeySource
from chatplane.internal.v1 import data_key_pb2, data_key_pb2_grpc
from chatplane.persistence.protos import Context, owner


class DataKeyServicer(data_key_pb2_grpc.DataKeyServiceServicer):
    """DataKeyService over the store's key source (fetch, create) and the keyring (destroy,
    which also forgets the keyring's cached copy)."""

    def __init__(self, keys: StoreKeySource, keyring: Keyring) -> None:
        self._keys = keys
        self._keyring = keyring

    async def GetUserDataKey(
        self, request: data_key_pb2.GetUserDataKeyRequest, context: Context
    ) -> data_key_pb2.GetUserDataKeyResponse:
        user = owner(request.owner)
        key = await self._keys.fetch(user.tenant_id, user.user_id, request.create)
        if key is None:
            return data_key_pb2.GetUserDataKeyResponse(found=False)
        return data_key_pb2.GetUserDataKeyResponse(
            found=True, key_id=key.key_id, kek_id=key.kek_id, wrapped_key=key.wrapped_key
        )

    async def DestroyUserDataKey(
        self, request: data_key_pb2.DestroyUserDataKeyRequest, context: Context
    ) -> data_key_pb2.DestroyUserDataKeyResponse:
        user = owner(request.owner)
        destroyed = await self._keyring.destroy_user_key(user.tenant_id, user.user_id)
        return data_key_pb2.DestroyUserDataKeyResponse(destroyed=destroyed)
