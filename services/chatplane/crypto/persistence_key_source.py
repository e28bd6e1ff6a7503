"""Wrapped data keys from Persistence (GetUserDataKey / DestroyUserDataKey), for the
processes that seal or open text but do not own the system of record (Agent, Gateway)."""

from __future__ import annotations

import grpc

from chatplane.common import errors
from chatplane.crypto.keyring import WrappedDataKey
from chatplane.crypto.shred_call import destroy_key_over_rpc
from chatplane.internal.v1 import data_key_pb2
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import admin_resources_pb2


class PersistenceKeySource:
    """A WrappedKeySource calling Persistence with `timeout` seconds per call."""

    def __init__(self, stub: PersistenceClient, timeout: float) -> None:
        self._stub = stub
        self._timeout = timeout

    async def fetch(self, tenant_id: str, user_id: str, create: bool) -> WrappedDataKey | None:
        try:
            response = await self._stub.data_keys.GetUserDataKey(
                data_key_pb2.GetUserDataKeyRequest(
                    owner=admin_resources_pb2.Owner(tenant_id=tenant_id, user_id=user_id),
                    create=create,
                ),
                timeout=self._timeout,
                # A channel still connecting (or reconnecting) waits within the timeout.
                wait_for_ready=True,
            )
        except grpc.aio.AioRpcError as error:
            raise _unavailable(error) from error
        if not response.found:
            return None
        return WrappedDataKey(
            tenant_id, user_id, response.key_id, response.kek_id, response.wrapped_key
        )

    async def destroy(self, tenant_id: str, user_id: str) -> bool:
        try:
            return await destroy_key_over_rpc(self._stub, tenant_id, user_id, self._timeout)
        except grpc.aio.AioRpcError as error:
            raise _unavailable(error) from error


def _unavailable(error: grpc.aio.AioRpcError) -> errors.Unavailable:
    """Without the user's data key nothing of theirs can be sealed or opened: the caller
    retries later, as when the log or the store is down."""
    return errors.Unavailable(f"the data keys are unavailable ({error.code().name})")
