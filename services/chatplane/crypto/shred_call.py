"""The one call that destroys a user's data key through Persistence (crypto-shredding).
Its own module because fewer callers may make it than may fetch keys: the mesh grants it to
the Gateway (EraseUser) and the admin account only (tests/deploy/call_graph.py)."""

from __future__ import annotations

from chatplane.internal.v1 import data_key_pb2
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import admin_resources_pb2


async def destroy_key_over_rpc(
    stub: PersistenceClient,
    tenant_id: str,
    user_id: str,
    timeout: float,
) -> bool:
    """DestroyUserDataKey; whether the user had a key. gRPC errors propagate."""
    response = await stub.data_keys.DestroyUserDataKey(
        data_key_pb2.DestroyUserDataKeyRequest(
            owner=admin_resources_pb2.Owner(tenant_id=tenant_id, user_id=user_id)
        ),
        timeout=timeout,
        wait_for_ready=True,
    )
    return response.destroyed
