"""The development API key of a stack started by `chatplane up`: user `dev` of tenant `dev`
with every role (chat, operator, admin), so one key runs every command of the README. Kept
in <data dir>/dev-api-key (mode 0600); a stored key the system of record no longer accepts
with those roles (revoked, unknown, fewer roles) is replaced by a new one and revoked
(docs/security.md, "The development key")."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

import grpc

from chatplane.common.roles import ALL_ROLES
from chatplane.internal.v1 import audit_pb2, identity_pb2
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import admin_resources_pb2

DEV_KEY_FILE: Final = "dev-api-key"
DEV_TENANT: Final = "dev"
DEV_USER: Final = "dev"
DEV_ROLES: Final = tuple(sorted(ALL_ROLES))
LABEL: Final = "development key"
_ACTOR: Final = audit_pb2.AuditActor(actor="chatplane up", source="development key")
_CALL_TIMEOUT_SECONDS: Final = 10.0


def key_id_of(api_key: str) -> str:
    """The key id of `cp_<key id>_<secret>` ("" when the text is not shaped like a key)."""
    prefix, _, rest = api_key.partition("_")
    key_id, _, secret = rest.partition("_")
    return key_id if prefix == "cp" and key_id and secret else ""


async def _usable(identity: PersistenceClient, key_id: str) -> bool:
    """Whether the stored key is the development user's, active, with every role."""
    try:
        stored = await identity.identity.GetApiKey(
            identity_pb2.GetApiKeyRequest(key_id=key_id), timeout=_CALL_TIMEOUT_SECONDS
        )
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            return False
        raise
    return (
        (stored.owner.tenant_id, stored.owner.user_id) == (DEV_TENANT, DEV_USER)
        and not stored.revoked
        and not stored.HasField("expire_time")
        and set(DEV_ROLES) <= set(stored.roles)
    )


async def development_key(channel: grpc.aio.Channel, data_dir: Path) -> str:
    """The development key of the stack whose Persistence `channel` reaches: the stored one
    when it is still usable, else a new one (the old one revoked), written to the data dir."""
    path = data_dir / DEV_KEY_FILE
    persistence = PersistenceClient(channel)
    stored = path.read_text().strip() if path.exists() else ""
    old_id = key_id_of(stored)
    if old_id and await _usable(persistence, old_id):
        return stored
    response = await persistence.identity.CreateApiKey(
        identity_pb2.CreateApiKeyRequest(
            owner=admin_resources_pb2.Owner(tenant_id=DEV_TENANT, user_id=DEV_USER),
            label=LABEL,
            roles=DEV_ROLES,
            actor=_ACTOR,
        ),
        timeout=_CALL_TIMEOUT_SECONDS,
    )
    _write_secret(path, response.api_key)
    if old_id:
        try:
            await persistence.identity.RevokeApiKey(
                identity_pb2.RevokeApiKeyRequest(tenant_id=DEV_TENANT, key_id=old_id, actor=_ACTOR),
                timeout=_CALL_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            # Unknown here (a new system of record) or another tenant's: nothing to revoke.
            if error.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise
    return response.api_key


def _write_secret(path: Path, api_key: str) -> None:
    """Writes the key readable by its owner only, replacing the file in one rename."""
    partial = path.with_name(path.name + ".new")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as key_file:
        key_file.write(api_key + "\n")
    partial.replace(path)
