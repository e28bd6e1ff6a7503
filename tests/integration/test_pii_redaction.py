"""PII redaction per tenant through the real services: for a tenant with redaction on, the
prompt the model provider receives (the LLM emulator, through the real Anthropic SDK) and the
memory index hold masked text, while the system of record keeps the original and the user's
history shows it; a tenant without redaction is untouched (docs/privacy.md)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_asyncio

from chatplane.internal.v1 import memory_pb2, memory_pb2_grpc
from chatplane.launcher import Stack
from chatplane.llm_emulator.process import EmulatorProcess, running_emulator
from chatplane.v1 import gateway_pb2
from tests.integration.stack_client import Client, create_key, poll, running_stack, unique

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

API_KEY = f"sk-emulator-{uuid.uuid4().hex}"
PROTECTED = unique("protected")
EMAIL = "ana.garcia@example.org"
CARD = "4111 1111 1111 1111"
QUESTION = f"Please refund card {CARD} and write to {EMAIL} about order zq-77."


@dataclass
class Rig:
    emulator: EmulatorProcess
    stack: Stack
    channel: grpc.aio.Channel


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    async with running_emulator("--tokens", "4", "--api-key", API_KEY) as emulator:
        env = {
            "CHATPLANE_LLM_BACKEND": "anthropic",
            "ANTHROPIC_API_KEY": API_KEY,
            "ANTHROPIC_BASE_URL": emulator.url,
            "CHATPLANE_LLM_MODEL": "claude-pii",
            "CHATPLANE_PII_REDACTION_TENANTS": f'["{PROTECTED}"]',
        }
        async with (
            running_stack(tmp_path_factory.mktemp("pii"), env) as stack,
            grpc.aio.insecure_channel(stack.info().address("gateway")) as channel,
        ):
            yield Rig(emulator, stack, channel)


async def _last_prompt(rig: Rig) -> str:
    requests: list[dict[str, Any]] = await rig.emulator.requests()
    body = requests[-1]["body"]
    return str(body["system"]) + str(body["messages"])


async def _indexed_texts(rig: Rig, tenant: str, user: str, conversation_id: str) -> list[str]:
    async with rig.stack.channel("memory") as channel:
        recalled = await memory_pb2_grpc.MemoryServiceStub(channel).Recall(
            memory_pb2.RecallRequest(
                tenant_id=tenant,
                user_id=user,
                conversation_id=conversation_id,
                query=f"refund card order zq-77 {EMAIL}",
                recent_limit=10,
                top_k=10,
            ),
            timeout=10,
        )
    return [m.text for m in recalled.recent] + [i.text for i in recalled.items]


async def test_a_protected_tenants_pii_is_masked_for_the_model_and_the_index(rig: Rig) -> None:
    client = Client(rig.channel, await create_key(rig.stack, PROTECTED, "ana"))
    first = await client.chat(QUESTION)
    assert first.done is not None and first.started is not None
    conversation_id = first.started.started.conversation_id
    prompt = await _last_prompt(rig)
    assert EMAIL not in prompt and CARD not in prompt
    assert "[EMAIL]" in prompt and "[CARD]" in prompt and "zq-77" in prompt

    # The next turn's prompt (its recent turns) and the index hold the masked text only.
    await client.chat("And when will it arrive?", conversation_id)
    prompt = await _last_prompt(rig)
    assert EMAIL not in prompt and "[EMAIL]" in prompt

    async def indexed_masked() -> list[str]:
        # Memory indexes the turn from the message log, shortly after `done`.
        texts = await _indexed_texts(rig, PROTECTED, "ana", conversation_id)
        return texts if any("[EMAIL]" in t for t in texts) else []

    texts = await poll(indexed_masked, timeout=30)
    assert any("[EMAIL]" in t for t in texts)
    assert not any(EMAIL in t or CARD in t for t in texts)

    # The system of record keeps what the user wrote.
    async def original_in_history() -> bool:
        history = await client.stub.GetConversation(
            gateway_pb2.GetConversationRequest(conversation_id=conversation_id),
            metadata=client.metadata,
            timeout=10,
        )
        return any(m.text == QUESTION for m in history.messages)

    await poll(original_in_history)


async def test_other_tenants_are_not_masked(rig: Rig) -> None:
    tenant = unique("plain")
    client = Client(rig.channel, await create_key(rig.stack, tenant, "bo"))
    turn = await client.chat(QUESTION)
    assert turn.done is not None and turn.started is not None
    prompt = await _last_prompt(rig)
    assert EMAIL in prompt and CARD in prompt and "[EMAIL]" not in prompt
    conversation_id = turn.started.started.conversation_id

    async def indexed_unmasked() -> bool:
        texts = await _indexed_texts(rig, tenant, "bo", conversation_id)
        return any(EMAIL in t for t in texts)

    await poll(indexed_unmasked, timeout=30)
