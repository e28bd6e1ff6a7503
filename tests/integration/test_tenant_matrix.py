"""The cross-tenant matrix: with tenant A's credentials, every public RPC that takes an object
id is tried with each of tenant B's ids (and a same-tenant other user's): none succeeds, and the
status is the same as for an id that does not exist, so nothing tells A that B's object is
there. Then 1,000 recall queries built from B's text, made as A, return none of B's items.

The RPCs and their id fields are found from the protobuf descriptors: a new RPC with an
`*_id` field is in the matrix without editing this file (and fails loudly until the kind of
object its field names is known here)."""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
import pytest_asyncio
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message as pb_message
from google.protobuf import message_factory

from chatplane.internal.v1 import memory_pb2, memory_pb2_grpc
from chatplane.launcher import Stack
from chatplane.v1 import admin_pb2, gateway_pb2, operator_pb2
from tests.integration.stack_client import (
    FAST_PACE,
    Client,
    create_key,
    poll,
    running_stack,
    unique,
    wait_until_indexed,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

# Public services a tenant's credentials reach; every method with an id field is tried.
PUBLIC_MODULES = (gateway_pb2, operator_pb2, admin_pb2)
# The role of the attacker's key per service (end users chat; operators and admins act on
# their whole tenant, so another user of the same tenant is not a victim there).
SERVICE_ROLE = {"OperatorService": "operator", "AdminService": "admin"}
# Which kind of object an id field names.
KIND_OF_FIELD = {
    "conversation_id": "conversation",
    "message_id": "message",
    "document_id": "document",
    "key_id": "key",
}
# Id fields that name a user message (the others that name a message name an answer).
USER_MESSAGE_FIELDS = {"regenerate_message_id", "edit_message_id"}
# Id fields whose request must carry no text (a regenerate re-answers the stored question).
NO_TEXT_FIELDS = {"regenerate_message_id"}
# Objects shared by every user of a tenant: another user of the same tenant may use them.
TENANT_WIDE = {"document", "key"}
# Not object ids: the caller's own idempotency key, and user ids an admin names within their
# own tenant.
NOT_IDS = {"client_message_id", "user_id"}
RECALL_QUERIES = 1_000
# Server streams that stay open while the caller's object exists.
LONG_LIVED = {"WatchConversation"}


@dataclass
class Tenant:
    tenant_id: str
    user_id: str
    client: Client
    ids: dict[str, list[str]] = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)
    staff: dict[str, Client] = field(default_factory=dict)  # role -> a key with that role

    def key_for(self, method: pb_descriptor.MethodDescriptor) -> Client:
        role = SERVICE_ROLE.get(method.containing_service.name)
        return self.client if role is None else self.staff[role]


async def _seed(stack: Stack, channel: grpc.aio.Channel, tenant_id: str, user: str) -> Tenant:
    """A user with three conversations of two turns, each message carrying a unique word."""
    client = Client(channel, await create_key(stack, tenant_id, user))
    owner = Tenant(
        tenant_id, user, client, {"conversation": [], "message": [], "document": [], "key": []}
    )
    for role in ("operator", "admin"):
        key = await create_key(stack, tenant_id, user, roles=(role,))
        owner.staff[role] = Client(channel, key)
        owner.ids["key"].append(key.split("_")[1])
    asked: list[tuple[str, str]] = []
    for c in range(3):
        conversation_id = ""
        for t in range(2):
            text = f"zq{uuid.uuid4().hex[:10]} about invoices and refunds, part {c}.{t}"
            turn = await client.chat(text, conversation_id)
            assert turn.started is not None and turn.done is not None
            conversation_id = turn.started.started.conversation_id
            owner.ids["message"] += [
                turn.started.started.user_message_id,
                turn.started.started.assistant_message_id,
            ]
            owner.texts.append(text)
            asked.append((text, turn.started.started.user_message_id))
        owner.ids["conversation"].append(conversation_id)
    for d in range(2):
        text = f"zq{uuid.uuid4().hex[:10]} is the refund policy code of {user}, document {d}."
        ingested = await client.stub.IngestDocument(
            iter(
                [
                    gateway_pb2.IngestDocumentRequest(
                        header=gateway_pb2.IngestDocumentHeader(
                            name=f"policy-{d}.txt", mime_type="text/plain"
                        )
                    ),
                    gateway_pb2.IngestDocumentRequest(content=text.encode()),
                ]
            ),
            metadata=client.metadata,
            timeout=60,
        )
        owner.ids["document"].append(ingested.document.document_id)
        owner.texts.append(text)
    # Memory indexes turns from the message log shortly after `done`: the recall checks below
    # must see every turn of the user indexed, or a leak could hide behind the lag.
    for text, message_id in asked:
        await wait_until_indexed(stack, tenant_id, user, text, message_id)
    return owner


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    env = {**FAST_PACE, "CHATPLANE_RATE_LIMIT_PER_MINUTE": "60000"}
    async with running_stack(tmp_path_factory.mktemp("matrix"), env) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def channel(stack: Stack) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(stack.info().address("gateway")) as chan:
        yield chan


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def parties(stack: Stack, channel: grpc.aio.Channel) -> dict[str, Tenant]:
    """A (the attacker), B (another tenant), and A2 (another user of A's tenant)."""
    tenant_a, tenant_b = unique("tenant-a"), unique("tenant-b")
    return {
        "A": await _seed(stack, channel, tenant_a, "alice"),
        "B": await _seed(stack, channel, tenant_b, "bob"),
        "A2": await _seed(stack, channel, tenant_a, "carol"),
    }


def _id_fields(method: pb_descriptor.MethodDescriptor) -> list[str]:
    return [
        f.name
        for f in method.input_type.fields
        if f.name.endswith("_id") and f.name not in NOT_IDS and f.type == f.TYPE_STRING
    ]


def _kind(id_field: str) -> str | None:
    """The kind of object an id field names: by its name, or by its last word before `_id`
    (`regenerate_message_id` names a message)."""
    return KIND_OF_FIELD.get(id_field) or KIND_OF_FIELD.get(id_field.split("_")[-2] + "_id")


def _methods_with_ids() -> list[pb_descriptor.MethodDescriptor]:
    return [
        method
        for module in PUBLIC_MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
        if _id_fields(method)
    ]


def _own_id(owner: Tenant, id_field: str) -> str:
    """One of the owner's objects for an id field: a user message where the field rewrites or
    re-answers one, otherwise an answer (feedback, resume and cancel are about answers)."""
    kind = _kind(id_field)
    assert kind is not None
    if kind == "message":
        return owner.ids["message"][0 if id_field in USER_MESSAGE_FIELDS else 1]
    return owner.ids[kind][0]


# Fields only an admin key may set: ChatRequest.variant pins a turn to a registry version
# (docs/registry.md, for the evaluation harness).
ADMIN_ONLY_FIELDS = frozenset({"chatplane.v1.ChatRequest.variant"})


def _template(
    method: pb_descriptor.MethodDescriptor, id_field: str, value: str, caller: Tenant
) -> bytes:
    """A request that is valid apart from whose object `id_field` names: other id fields name
    the caller's own objects (members of a oneof are left out), other text fields say hello
    (empty where the field under test wants no text), enums take their first real value."""
    request: pb_message.Message = message_factory.GetMessageClass(method.input_type)()
    ids = _id_fields(method)
    for f in method.input_type.fields:
        if f.is_repeated or f.message_type is not None:
            continue
        if f.name == id_field:
            setattr(request, f.name, value)
        elif f.name in ids:
            if f.containing_oneof is None:
                setattr(request, f.name, _own_id(caller, f.name))
        elif f.name.endswith("_token"):
            continue  # page tokens: the first page
        elif f.full_name in ADMIN_ONLY_FIELDS:
            continue  # left empty: only an admin may set it (PERMISSION_DENIED otherwise)
        elif f.type == f.TYPE_STRING:
            if not (f.name == "text" and id_field in NO_TEXT_FIELDS):
                setattr(request, f.name, "hello")
        elif f.type == f.TYPE_ENUM:
            setattr(request, f.name, f.enum_type.values[1].number)
    return request.SerializeToString()


async def _status(
    channel: grpc.aio.Channel,
    method: pb_descriptor.MethodDescriptor,
    payload: bytes,
    key: Client,
    timeout: float = 30.0,
) -> grpc.StatusCode:
    path = f"/{method.containing_service.full_name}/{method.name}"
    try:
        if method.client_streaming:
            await channel.stream_unary(path)(
                iter([payload]), metadata=key.metadata, timeout=timeout
            )
        elif method.server_streaming:
            call = channel.unary_stream(path)(payload, metadata=key.metadata, timeout=timeout)
            async for _ in call:
                pass
        else:
            await channel.unary_unary(path)(payload, metadata=key.metadata, timeout=timeout)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def _matrix() -> list[object]:
    """(method, victim) pairs; a same-tenant victim only where an id names a per-user object."""
    pairs: list[object] = []
    for method in _methods_with_ids():
        name = f"{method.containing_service.name}.{method.name}"
        for victim, label in (("B", "other-tenant"), ("A2", "same-tenant-other-user")):
            tenant_wide = {_kind(f) for f in _id_fields(method)} <= TENANT_WIDE
            if victim == "A2" and (tenant_wide or method.containing_service.name in SERVICE_ROLE):
                continue
            pairs.append(pytest.param(method, victim, id=f"{name}-{label}"))
    return pairs


@pytest.mark.parametrize(("method", "victim"), _matrix())
async def test_someone_elses_ids_look_like_ids_that_do_not_exist(
    channel: grpc.aio.Channel,
    parties: dict[str, Tenant],
    method: pb_descriptor.MethodDescriptor,
    victim: str,
) -> None:
    attacker = parties["A"]
    tried = 0
    for id_field in _id_fields(method):
        kind = _kind(id_field)
        assert kind is not None, f"{method.full_name}.{id_field}: which objects does it name?"
        if victim == "A2" and (
            kind in TENANT_WIDE or method.containing_service.name in SERVICE_ROLE
        ):
            continue
        missing = await _status(
            channel,
            method,
            _template(method, id_field, str(uuid.uuid4()), attacker),
            attacker.key_for(method),
        )
        assert missing is not grpc.StatusCode.OK, (method.full_name, id_field)
        for object_id in parties[victim].ids[kind]:
            code = await _status(
                channel,
                method,
                _template(method, id_field, object_id, attacker),
                attacker.key_for(method),
            )
            assert code is missing, (method.full_name, id_field, object_id, code, missing)
            tried += 1
    assert tried >= 2


async def test_the_victims_data_is_untouched_by_the_matrix(
    channel: grpc.aio.Channel, parties: dict[str, Tenant]
) -> None:
    """Deletes and feedback tried by A left B's conversations whole (run after the matrix)."""
    victim = parties["B"]
    for conversation_id in victim.ids["conversation"]:
        history = await victim.client.stub.GetConversation(
            gateway_pb2.GetConversationRequest(conversation_id=conversation_id),
            metadata=victim.client.metadata,
            timeout=10,
        )
        assert len(history.messages) == 4


async def test_the_templates_succeed_on_the_callers_own_objects(
    channel: grpc.aio.Channel, stack: Stack
) -> None:
    """The control: with the caller's own ids the same requests work, so the matrix's refusals
    are about ownership, not about a malformed template."""
    tenant = unique("control")
    for method in _methods_with_ids():
        own = await _seed(stack, channel, tenant, unique("u"))
        for id_field in _id_fields(method):
            kind = _kind(id_field)
            assert kind is not None
            object_id = _own_id(own, id_field)
            if method.containing_service.name == "OperatorService":
                # An operator acts on conversations handed to a human.
                await own.client.stub.RequestHandoff(
                    gateway_pb2.RequestHandoffRequest(conversation_id=object_id),
                    metadata=own.client.metadata,
                    timeout=10,
                )
            # A watch stays open while the caller watches: its deadline is how it ends.
            timeout = 2.0 if method.name in LONG_LIVED else 30.0
            if kind == "message":
                await poll(functools.partial(_stored, channel, own, object_id))
            code = await _status(
                channel,
                method,
                _template(method, id_field, object_id, own),
                own.key_for(method),
                timeout=timeout,
            )
            accepted = {grpc.StatusCode.OK}
            if method.name in LONG_LIVED:
                accepted.add(grpc.StatusCode.DEADLINE_EXCEEDED)
            assert code in accepted, (method.full_name, id_field, code)


async def _stored(channel: grpc.aio.Channel, owner: Tenant, message_id: str) -> bool:
    history = await owner.client.stub.GetConversation(
        gateway_pb2.GetConversationRequest(conversation_id=owner.ids["conversation"][0]),
        metadata=owner.client.metadata,
        timeout=10,
    )
    return any(m.message_id == message_id for m in history.messages)


async def test_recall_as_a_with_bs_words_never_returns_bs_items(
    stack: Stack, parties: dict[str, Tenant]
) -> None:
    attacker, victim = parties["A"], parties["B"]
    victim_ids = set(victim.ids["message"])
    victim_documents = set(victim.ids["document"])
    victim_words = {text.split()[0] for text in victim.texts}
    # Queries: each of B's texts, its unique word alone, and windows of its words.
    queries: list[str] = []
    while len(queries) < RECALL_QUERIES:
        for text in victim.texts:
            words = text.split()
            queries += [text, words[0], " ".join(words[: len(queries) % len(words) + 1])]
    async with stack.channel("memory") as channel:
        stub = memory_pb2_grpc.MemoryServiceStub(channel)
        returned = 0
        for query in queries[:RECALL_QUERIES]:
            response = await stub.Recall(
                memory_pb2.RecallRequest(
                    tenant_id=attacker.tenant_id,
                    user_id=attacker.user_id,
                    conversation_id=attacker.ids["conversation"][0],
                    query=query,
                    recent_limit=4,
                    top_k=10,
                ),
                timeout=10,
            )
            returned += len(response.items)
            for item in response.items:
                assert item.citation.source_id not in victim_ids, query
                assert item.citation.document_id not in victim_documents, query
                assert not victim_words & set(item.text.split()), query
            for recent in response.recent:
                assert recent.message_id not in victim_ids
    # A has turns of their own, so recall did answer: the test saw real results.
    assert returned > 0
