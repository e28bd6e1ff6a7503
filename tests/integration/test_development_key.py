"""The development key of `chatplane up` (docs/security.md, "The development key"): every
role, kept across starts, replaced (and the old one revoked) when the system of record no
longer accepts it with every role."""

from __future__ import annotations

import stat
from pathlib import Path

from chatplane.internal.v1 import identity_pb2
from chatplane.launcher import Stack
from chatplane.launcher.development_key import DEV_KEY_FILE, DEV_TENANT, DEV_USER, key_id_of
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import registry_pb2, registry_pb2_grpc
from tests.integration.stack_client import create_key, running_stack


async def stored(stack: Stack, api_key: str) -> identity_pb2.GetApiKeyResponse:
    async with stack.channel("persistence") as channel:
        response: identity_pb2.GetApiKeyResponse = await PersistenceClient(
            channel
        ).identity.GetApiKey(identity_pb2.GetApiKeyRequest(key_id=key_id_of(api_key)), timeout=10)
    return response


async def test_the_development_key_has_every_role_and_replaces_one_that_lacks_them(
    tmp_path: Path,
) -> None:
    async with running_stack(tmp_path, {}) as stack:
        key_file = stack.data_dir / DEV_KEY_FILE
        key = await stack.development_key()
        record = await stored(stack, key)
        assert (record.owner.tenant_id, record.owner.user_id) == (DEV_TENANT, DEV_USER)
        assert sorted(record.roles) == ["admin", "chat", "operator"]
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert await stack.development_key() == key

        # The registry (admin of tenant dev) answers it through the Gateway.
        async with stack.channel("gateway") as channel:
            listed = await registry_pb2_grpc.RegistryServiceStub(channel).ListVariants(
                registry_pb2.ListVariantsRequest(),
                metadata=(("authorization", f"Bearer {key}"),),
                timeout=10,
            )
        assert list(listed.variants) == []

        # A chat-only key in the file (what an older start wrote): replaced and revoked.
        chat_only = await create_key(stack, DEV_TENANT, DEV_USER)
        key_file.write_text(chat_only + "\n")
        replacement = await stack.development_key()
        assert replacement not in (chat_only, key)
        assert key_file.read_text().strip() == replacement
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert (await stored(stack, chat_only)).revoked
        assert sorted((await stored(stack, replacement)).roles) == ["admin", "chat", "operator"]

        # A key the system of record never issued (a new database): replaced.
        key_file.write_text("cp_00000000-0000-4000-8000-000000000000_" + "ab" * 32 + "\n")
        fresh = await stack.development_key()
        assert fresh != replacement and not (await stored(stack, fresh)).revoked
