"""Identity end to end on the real four-process stack (embedded profile) with a small OIDC
provider in the test (real RSA/EC keys, a JWKS over HTTP): the JWT matrix (every bad token is
UNAUTHENTICATED, saying why; valid RS256 and ES256 tokens work; a rotated JWKS is picked up),
roles from the token's scope, AdminService key management per tenant (list, create, rotate
with overlap, revoke; revocation on a second Gateway process within api_key_cache_seconds),
exactly one audit record per failure or change, and `chatplane audit verify` before and
after a record of the running stack is edited."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
import pytest_asyncio
from google.protobuf import duration_pb2

from chatplane.internal.v1 import audit_pb2
from chatplane.launcher import Stack
from chatplane.launcher.stack import ServiceProcess
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from tests.integration.oidc_provider import (
    AUDIENCE,
    ISSUER,
    Provider,
    SigningKey,
    claims,
    hs256_with_public_key,
    running_provider,
    unsigned,
)
from tests.integration.stack_client import FAST_PACE, Client, create_key, poll, store_dsn, unique

pytestmark = pytest.mark.asyncio(loop_scope="module")

KEY_CACHE_SECONDS = 1.0
RSA_KEY = SigningKey.rsa()
EC_KEY = SigningKey.ec()
_SCRIPT = Path(sys.executable).with_name("chatplane")
CHATPLANE = (
    [str(_SCRIPT)]
    if _SCRIPT.exists()
    else [sys.executable, "-c", "from chatplane.cli.main import main; main()"]
)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def provider() -> AsyncIterator[Provider]:
    async with running_provider(RSA_KEY, EC_KEY) as running:
        yield running


def stack_env(provider: Provider) -> dict[str, str]:
    return {
        **FAST_PACE,
        "CHATPLANE_LLM_BACKEND": "offline",
        "CHATPLANE_RATE_LIMIT_PER_MINUTE": "60000",
        "CHATPLANE_RATE_LIMIT_BURST": "2000",
        "CHATPLANE_API_KEY_CACHE_SECONDS": str(KEY_CACHE_SECONDS),
        "CHATPLANE_OIDC_ISSUER": ISSUER,
        "CHATPLANE_OIDC_AUDIENCE": AUDIENCE,
        "CHATPLANE_OIDC_JWKS_URL": provider.url,
        "CHATPLANE_OIDC_JWKS_MIN_REFRESH_SECONDS": "0.2",
        "CHATPLANE_AUDIT_FLUSH_SECONDS": "0.05",
    }


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, provider: Provider
) -> AsyncIterator[Stack]:
    env = stack_env(provider)
    stack = Stack(
        data_dir=tmp_path_factory.mktemp("identity"),
        ports=dict.fromkeys(("gateway", "agent", "memory", "persistence"), 0),
        env={**os.environ, **env},
    )
    await stack.start()
    try:
        yield stack
    finally:
        codes = await stack.stop(timeout=10)
        assert all(code == 0 for code in codes.values()), codes


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def channel(stack: Stack) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(stack.info().address("gateway")) as chan:
        yield chan


def bearer(token: str, request_id: str | None = None) -> tuple[tuple[str, str], ...]:
    return (
        ("authorization", f"Bearer {token}"),
        ("x-request-id", request_id or uuid.uuid4().hex),
    )


async def audit_log(stack: Stack) -> list[audit_pb2.AuditRecord]:
    records: list[audit_pb2.AuditRecord] = []
    async with stack.channel("persistence") as channel:
        stub = PersistenceClient(channel)
        while True:
            page = await stub.audit.ListAuditRecords(
                audit_pb2.ListAuditRecordsRequest(
                    after_seq=records[-1].seq if records else 0, page_size=1000
                ),
                timeout=10,
            )
            records.extend(page.records)
            if len(page.records) < 1000:
                return records


async def audited(stack: Stack, request_id: str) -> list[audit_pb2.AuditRecord]:
    """The audit records of one request, once there are any (the Gateway appends in batches)."""

    async def found() -> list[audit_pb2.AuditRecord]:
        return [r for r in await audit_log(stack) if r.event.request_id == request_id]

    await poll(found, timeout=10)
    # Nothing more arrives for it: the recorder sends each event once.
    await asyncio.sleep(0.2)
    return await found()


async def list_conversations(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]
) -> gateway_pb2.ListConversationsResponse:
    return await gateway_pb2_grpc.GatewayServiceStub(channel).ListConversations(
        gateway_pb2.ListConversationsRequest(), metadata=metadata, timeout=10
    )


# --- OIDC end-user JWTs ---------------------------------------------------------------------


async def test_valid_rs256_and_es256_tokens_work(channel: grpc.aio.Channel) -> None:
    tenant, user = unique("tenant"), unique("user")
    rsa_token = RSA_KEY.sign(claims(user, tenant))
    turn = await Client(channel, rsa_token).chat("hello from a token")
    assert turn.done is not None and turn.started is not None
    conversation_id = turn.started.started.conversation_id

    async def listed() -> bool:
        response = await list_conversations(channel, bearer(EC_KEY.sign(claims(user, tenant))))
        return [c.conversation_id for c in response.conversations] == [conversation_id]

    # The same user through an ES256 token sees the same conversation; another tenant's user
    # with the same sub sees nothing.
    await poll(listed)
    other = await list_conversations(channel, bearer(RSA_KEY.sign(claims(user, unique("t")))))
    assert list(other.conversations) == []


def _now() -> int:
    return int(time.time())


BAD_TOKENS: dict[str, tuple[Callable[[], str | None], str]] = {
    "missing": (lambda: None, "missing credentials"),
    "malformed": (lambda: "not-a-jwt", "malformed token"),
    "malformed-segments": (lambda: "eyJhbGciOi.eyJzdWIi.c2ln", "malformed token"),
    "expired": (
        lambda: RSA_KEY.sign(claims("u", "t", exp=_now() - 3600, iat=_now() - 7200, nbf=0)),
        "token expired",
    ),
    "not-yet-valid": (
        lambda: RSA_KEY.sign(claims("u", "t", nbf=_now() + 3600)),
        "not yet valid",
    ),
    "wrong-issuer": (
        lambda: RSA_KEY.sign(claims("u", "t", iss="https://evil.example/")),
        "issuer is not accepted",
    ),
    "wrong-audience": (
        lambda: RSA_KEY.sign(claims("u", "t", aud="someone-else")),
        "audience is not accepted",
    ),
    "unknown-kid": (
        lambda: SigningKey.rsa("never-published").sign(claims("u", "t")),
        "unknown key (kid 'never-published')",
    ),
    "alg-none": (lambda: unsigned(claims("u", "t"), RSA_KEY.kid), "'none' is not accepted"),
    "hs256-with-public-key": (
        lambda: hs256_with_public_key(claims("u", "t"), RSA_KEY),
        "'HS256' is not accepted",
    ),
    "forged-signature": (
        lambda: SigningKey.rsa().sign(claims("u", "t"), kid=RSA_KEY.kid),
        "signature does not verify",
    ),
    "no-subject": (
        lambda: RSA_KEY.sign({k: v for k, v in claims("u", "t").items() if k != "sub"}),
        "no 'sub' claim",
    ),
    "no-tenant": (
        lambda: RSA_KEY.sign({k: v for k, v in claims("u", "t").items() if k != "tenant"}),
        "no tenant claim 'tenant'",
    ),
    "bad-api-key": (lambda: f"cp_{uuid.uuid4()}_{'0' * 64}", "invalid api key"),
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_every_bad_token_is_unauthenticated_and_audited_once(
    stack: Stack, channel: grpc.aio.Channel, case: str
) -> None:
    make, message = BAD_TOKENS[case]
    token = make()
    request_id = uuid.uuid4().hex
    metadata = (("x-request-id", request_id),) if token is None else bearer(token, request_id)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await list_conversations(channel, metadata)
    assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert message in (raised.value.details() or ""), raised.value.details()
    (record,) = await audited(stack, request_id)
    event = record.event
    assert (event.action, event.outcome) == ("auth.failure", "failure")
    assert event.detail == raised.value.details()
    assert event.source.startswith("ipv4:127.0.0.1:") or event.source.startswith("ipv6:")
    if token is not None:
        assert token not in repr(record)  # never the credential itself
    if case == "bad-api-key":
        assert token is not None and event.object == f"api_key/{token.split('_')[1]}"


async def test_api_keys_keep_working_beside_tokens(stack: Stack, channel: grpc.aio.Channel) -> None:
    key = await create_key(stack, unique("tenant"), unique("user"))
    turn = await Client(channel, key).chat("hello from a key")
    assert turn.done is not None


async def test_a_rotated_jwks_is_picked_up(provider: Provider, channel: grpc.aio.Channel) -> None:
    tenant, user = unique("tenant"), unique("user")
    await list_conversations(channel, bearer(RSA_KEY.sign(claims(user, tenant))))
    fetches = provider.fetches
    rotated = SigningKey.rsa()
    provider.published = [rotated, EC_KEY]  # the provider rotated: RSA_KEY is retired
    try:
        # A token of the new key names a kid the Gateway has not seen: it refetches at once.
        await list_conversations(channel, bearer(rotated.sign(claims(user, tenant))))
        assert provider.fetches == fetches + 1
        # The retired key is gone from the refreshed cache.
        await asyncio.sleep(0.25)  # past the refetch throttle (0.2 s), so it may look again
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await list_conversations(channel, bearer(RSA_KEY.sign(claims(user, tenant))))
        assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "unknown key" in (raised.value.details() or "")
    finally:
        provider.published = [RSA_KEY, EC_KEY]
        await asyncio.sleep(0.25)


async def test_unknown_kids_do_not_hammer_the_provider(
    provider: Provider, channel: grpc.aio.Channel
) -> None:
    await asyncio.sleep(0.25)
    fetches = provider.fetches
    began = time.monotonic()
    for _ in range(30):
        with pytest.raises(grpc.aio.AioRpcError):
            await list_conversations(
                channel, bearer(SigningKey.ec(unique("kid")).sign(claims("u", "t")))
            )
    elapsed = time.monotonic() - began
    # At most one fetch per refetch interval (0.2 s), however many invented kids arrive.
    assert provider.fetches - fetches <= 1 + elapsed / 0.2, (provider.fetches - fetches, elapsed)


async def test_roles_come_from_the_scope_claim(channel: grpc.aio.Channel) -> None:
    tenant = unique("tenant")
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    request = admin_pb2.ListApiKeysRequest()
    listed = await admin.ListApiKeys(
        request, metadata=bearer(RSA_KEY.sign(claims("boss", tenant, scope="openid admin")))
    )
    assert list(listed.keys) == []
    # Azure-style `scp` list when there is no `scope`.
    await admin.ListApiKeys(
        request, metadata=bearer(RSA_KEY.sign(claims("boss", tenant, scope=None, scp=["admin"])))
    )
    for scope in ("chat", None, "openid profile"):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await admin.ListApiKeys(
                request, metadata=bearer(RSA_KEY.sign(claims("user", tenant, scope=scope)))
            )
        assert raised.value.code() is grpc.StatusCode.PERMISSION_DENIED
    # No mapped scope at all: the default role (chat) is enough to chat.
    token = RSA_KEY.sign(claims(unique("user"), tenant, scope="openid"))
    assert (await Client(channel, token).chat("hi")).done is not None


# --- AdminService: API keys of the caller's tenant ------------------------------------------


async def test_a_chat_key_may_not_administer(stack: Stack, channel: grpc.aio.Channel) -> None:
    key = await create_key(stack, unique("tenant"), "user")
    request_id = uuid.uuid4().hex
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await admin_pb2_grpc.AdminServiceStub(channel).ListApiKeys(
            admin_pb2.ListApiKeysRequest(), metadata=bearer(key, request_id)
        )
    assert raised.value.code() is grpc.StatusCode.PERMISSION_DENIED
    (record,) = await audited(stack, request_id)
    assert (record.event.action, record.event.outcome) == ("authz.denied", "denied")


async def test_admin_creates_lists_rotates_and_revokes_keys_of_its_tenant(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    tenant, other_tenant = unique("tenant"), unique("tenant")
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    root = bearer(await create_key(stack, tenant, "root", roles=("admin",)))
    theirs = await create_key(stack, other_tenant, "eve")
    theirs_id = theirs.split("_")[1]

    request_id = uuid.uuid4().hex
    created = await admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(user_id="bob", label="phone", roles=["chat"]),
        metadata=bearer(root[0][1].split(" ")[1], request_id),
    )
    assert created.key.owner.tenant_id == tenant and created.key.owner.user_id == "bob"
    assert (await Client(channel, created.api_key).chat("hi")).done is not None
    (record,) = await audited(stack, request_id)
    assert record.event.action == "api_key.create"
    assert record.event.object == f"api_key/{created.key.key_id}"
    assert record.event.actor == "user:root"

    listed = await admin.ListApiKeys(admin_pb2.ListApiKeysRequest(), metadata=root)
    ids = {k.key_id for k in listed.keys}
    assert created.key.key_id in ids and theirs_id not in ids
    assert all(k.owner.tenant_id == tenant for k in listed.keys)
    only_bob = await admin.ListApiKeys(admin_pb2.ListApiKeysRequest(user_id="bob"), metadata=root)
    assert [k.key_id for k in only_bob.keys] == [created.key.key_id]

    # Another tenant's key is NOT_FOUND, exactly like a key that does not exist.
    for key_id in (theirs_id, str(uuid.uuid4()), "junk"):
        for call in (
            admin.RevokeApiKey(admin_pb2.RevokeApiKeyRequest(key_id=key_id), metadata=root),
            admin.RotateApiKey(admin_pb2.RotateApiKeyRequest(key_id=key_id), metadata=root),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call
            assert raised.value.code() is grpc.StatusCode.NOT_FOUND
            assert raised.value.details() == "api key not found"
    assert (await Client(channel, theirs).chat("still mine")).done is not None

    # Rotation with an overlap: both work, then only the new one.
    overlap = 1.5
    request_id = uuid.uuid4().hex
    rotated = await admin.RotateApiKey(
        admin_pb2.RotateApiKeyRequest(
            key_id=created.key.key_id, overlap=duration_pb2.Duration(seconds=1, nanos=500_000_000)
        ),
        metadata=bearer(root[0][1].split(" ")[1], request_id),
    )
    rotated_at = time.monotonic()
    assert rotated.previous.replaced_by_key_id == rotated.key.key_id
    assert rotated.previous.HasField("expire_time") and not rotated.previous.revoked
    (record,) = await audited(stack, request_id)
    assert record.event.action == "api_key.rotate" and rotated.key.key_id in record.event.detail
    await list_conversations(channel, bearer(created.api_key))
    await list_conversations(channel, bearer(rotated.api_key))

    async def old_refused() -> bool:
        try:
            await list_conversations(channel, bearer(created.api_key))
        except grpc.aio.AioRpcError as error:
            assert error.code() is grpc.StatusCode.UNAUTHENTICATED
            return True
        return False

    await poll(old_refused, timeout=overlap + 2)
    assert time.monotonic() - rotated_at >= overlap - 0.2
    # The old key, rotated already, cannot be rotated again.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await admin.RotateApiKey(
            admin_pb2.RotateApiKeyRequest(key_id=created.key.key_id), metadata=root
        )
    assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION

    # Revocation through this Gateway holds here at once.
    revoked = await admin.RevokeApiKey(
        admin_pb2.RevokeApiKeyRequest(key_id=rotated.key.key_id), metadata=root
    )
    assert revoked.key.revoked
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await list_conversations(channel, bearer(rotated.api_key))
    assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED
    everything = await admin.ListApiKeys(
        admin_pb2.ListApiKeysRequest(include_revoked=True, user_id="bob"), metadata=root
    )
    assert {k.key_id for k in everything.keys} == {created.key.key_id, rotated.key.key_id}
    assert (
        await admin.ListApiKeys(admin_pb2.ListApiKeysRequest(user_id="bob"), metadata=root)
    ).keys == []


@pytest.mark.parametrize(
    ("call", "field"),
    [
        ("list-page-size", "page_size"),
        ("list-page-token", "page_token"),
        ("create-no-user", "user_id"),
        ("create-bad-role", "roles"),
        ("create-nul-user", "user_id"),
        ("rotate-long-overlap", "overlap"),
        ("rotate-negative-overlap", "overlap"),
    ],
)
async def test_bad_admin_requests_are_invalid_argument(
    stack: Stack, channel: grpc.aio.Channel, call: str, field: str
) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    root = bearer(await create_key(stack, unique("tenant"), "root", roles=("admin",)))
    key_id = str(uuid.uuid4())
    calls: dict[str, Any] = {
        "list-page-size": lambda: admin.ListApiKeys(
            admin_pb2.ListApiKeysRequest(page_size=501), metadata=root
        ),
        "list-page-token": lambda: admin.ListApiKeys(
            admin_pb2.ListApiKeysRequest(page_token="bm9wZQ"), metadata=root
        ),
        "create-no-user": lambda: admin.CreateApiKey(
            admin_pb2.CreateApiKeyRequest(), metadata=root
        ),
        "create-bad-role": lambda: admin.CreateApiKey(
            admin_pb2.CreateApiKeyRequest(user_id="u", roles=["root"]), metadata=root
        ),
        "create-nul-user": lambda: admin.CreateApiKey(
            admin_pb2.CreateApiKeyRequest(user_id="a\x00b"), metadata=root
        ),
        "rotate-long-overlap": lambda: admin.RotateApiKey(
            admin_pb2.RotateApiKeyRequest(
                key_id=key_id, overlap=duration_pb2.Duration(seconds=25 * 3600)
            ),
            metadata=root,
        ),
        "rotate-negative-overlap": lambda: admin.RotateApiKey(
            admin_pb2.RotateApiKeyRequest(key_id=key_id, overlap=duration_pb2.Duration(seconds=-1)),
            metadata=root,
        ),
    }
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await calls[call]()
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (raised.value.details() or "").startswith(field), raised.value.details()


async def test_revocation_reaches_another_gateway_within_the_cache_time(
    stack: Stack, channel: grpc.aio.Channel, provider: Provider
) -> None:
    info = stack.info()
    args = ["--gateway-port", "0"] + [
        arg
        for name in ("agent", "memory", "persistence")
        for arg in (f"--{name}-address", info.address(name))
    ]
    env = {
        **os.environ,
        **stack_env(provider),
        "CHATPLANE_DATA_DIR": str(stack.data_dir),
        "CHATPLANE_HOST": info.host,
        # The second Gateway shares the stack's own PostgreSQL.
        "CHATPLANE_POSTGRES_DSN": store_dsn(stack.data_dir),
    }
    second = await ServiceProcess.start(
        "gateway", args, env, stack.data_dir / "logs" / "gateway-2.log"
    )
    try:
        async with grpc.aio.insecure_channel(f"{info.host}:{second.port}") as other:
            tenant = unique("tenant")
            root = bearer(await create_key(stack, tenant, "root", roles=("admin",)))
            key = await create_key(stack, tenant, "carol")
            # Both Gateways know (and cache) the key.
            await list_conversations(channel, bearer(key))
            await list_conversations(other, bearer(key))
            await admin_pb2_grpc.AdminServiceStub(channel).RevokeApiKey(
                admin_pb2.RevokeApiKeyRequest(key_id=key.split("_")[1]), metadata=root
            )
            revoked_at = time.monotonic()

            async def refused() -> bool:
                try:
                    await list_conversations(other, bearer(key))
                except grpc.aio.AioRpcError as error:
                    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
                    return True
                return False

            await poll(refused, timeout=KEY_CACHE_SECONDS + 5, interval=0.05)
            elapsed = time.monotonic() - revoked_at
            # Bound: the other replica's cache time, plus a poll interval and a round trip
            # (generous: the test machine is shared).
            assert elapsed <= KEY_CACHE_SECONDS + 1.0, elapsed
    finally:
        assert await second.stop(10) == 0


# --- The audit chain of the running stack -----------------------------------------------


def chatplane_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CHATPLANE, "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_cli_manages_keys_and_verifies_the_chain(stack: Stack) -> None:
    tenant = unique("tenant")
    created = await asyncio.to_thread(
        chatplane_cli, stack.data_dir, "keys", "create", "--tenant", tenant, "--user", "dave"
    )
    assert created.returncode == 0, created.stderr
    key_id = created.stdout.strip().split("_")[1]
    listed = await asyncio.to_thread(
        chatplane_cli, stack.data_dir, "keys", "list", "--tenant", tenant
    )
    assert listed.returncode == 0 and key_id in listed.stdout and "active" in listed.stdout
    rotated = await asyncio.to_thread(
        chatplane_cli,
        stack.data_dir,
        "keys",
        "rotate",
        key_id,
        "--tenant",
        tenant,
        "--overlap",
        "60",
    )
    assert rotated.returncode == 0, rotated.stderr
    new_id = rotated.stdout.strip().split("_")[1]
    assert f"replaced by {new_id}" in rotated.stderr
    revoked = await asyncio.to_thread(
        chatplane_cli, stack.data_dir, "keys", "revoke", new_id, "--tenant", tenant
    )
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    wrong_tenant = await asyncio.to_thread(
        chatplane_cli, stack.data_dir, "keys", "revoke", key_id, "--tenant", unique("tenant")
    )
    assert wrong_tenant.returncode == 1 and "NOT_FOUND" in wrong_tenant.stderr
    records = [r for r in await audit_log(stack) if r.event.tenant_id == tenant]
    assert [r.event.action for r in records] == [
        "api_key.create",
        "api_key.rotate",
        "api_key.revoke",
    ]
    assert all(r.event.actor.startswith("cli:") for r in records)

    verified = await asyncio.to_thread(chatplane_cli, stack.data_dir, "audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("audit chain OK: ")
    tail = await asyncio.to_thread(chatplane_cli, stack.data_dir, "audit", "tail", "-n", "3")
    assert tail.returncode == 0 and "api_key.revoke" in tail.stdout


async def test_audit_verify_names_an_edited_record(stack: Stack) -> None:
    records = await audit_log(stack)
    assert len(records) > 20
    target = records[len(records) // 2]
    database = psycopg.connect(store_dsn(stack.data_dir), autocommit=True)
    try:
        edited = "success" if target.event.outcome != "success" else "failure"
        database.execute("UPDATE audit_log SET outcome = %s WHERE seq = %s", (edited, target.seq))
        broken = await asyncio.to_thread(chatplane_cli, stack.data_dir, "audit", "verify")
        assert broken.returncode == 1
        assert f"audit chain BROKEN at record {target.seq}: " in broken.stderr, broken.stderr
        database.execute(
            "UPDATE audit_log SET outcome = %s WHERE seq = %s", (target.event.outcome, target.seq)
        )
    finally:
        database.close()
    repaired = await asyncio.to_thread(chatplane_cli, stack.data_dir, "audit", "verify")
    assert repaired.returncode == 0, repaired.stderr
