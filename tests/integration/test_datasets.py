"""Feedback datasets through the real services (docs/datasets.md): `chatplane dataset export`
over Persistence (every opted-in tenant) and over the Gateway's AdminService (an admin
key's tenant) writes JSONL files that validate against both formats' schemas, hold no text of
a tenant that did not opt in, are masked for a redacting tenant, and match their manifest;
the admin RPC refuses other roles and tenants that did not opt in."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from chatplane.datasets.formats import ANTHROPIC, FORMATS
from chatplane.internal.v1 import analytics_pb2, audit_pb2
from chatplane.launcher import Stack
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2
from tests.integration.stack_client import Client, create_key, poll, running_stack, unique
from tests.unit.datasets.test_dataset_files import schema_validators

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

CHATPLANE = [str(Path(sys.executable).with_name("chatplane"))]
REDACTING = unique("redacting")
PLAIN = unique("plain")
CLOSED = unique("closed")
EMAIL = "ana.garcia@example.org"
CANARY = "zebra-canary-quartz"


@dataclass
class Rig:
    stack: Stack
    data_dir: Path
    channel: grpc.aio.Channel


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    data_dir = tmp_path_factory.mktemp("datasets")
    env = {
        "CHATPLANE_DATASET_EXPORT_TENANTS": json.dumps([REDACTING, PLAIN]),
        "CHATPLANE_PII_REDACTION_TENANTS": json.dumps([REDACTING]),
    }
    async with (
        running_stack(data_dir, env) as stack,
        grpc.aio.insecure_channel(stack.info().address("gateway")) as channel,
    ):
        yield Rig(stack, data_dir, channel)


async def _rate(
    client: Client, turn_started: gateway_pb2.ChatResponse, up: bool, score: int
) -> None:
    request = gateway_pb2.SubmitFeedbackRequest(
        message_id=turn_started.started.assistant_message_id,
        rating=gateway_pb2.RATING_THUMBS_UP if up else gateway_pb2.RATING_THUMBS_DOWN,
    )
    if score:
        request.score = score

    async def stored() -> bool:
        try:
            await client.stub.SubmitFeedback(request, metadata=client.metadata, timeout=10)
        except grpc.aio.AioRpcError as error:  # the answer is not stored yet
            if error.code() is grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True

    await poll(stored)


def _export(rig: Rig, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    since = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    return subprocess.run(
        [
            *CHATPLANE,
            "--data-dir",
            str(rig.data_dir),
            "dataset",
            "export",
            "--since",
            since,
            "--min-rating",
            "3",
            "--out",
            str(out),
            *extra,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _check_files(out: Path, records: int) -> dict[str, object]:
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["records"] == records
    validators = schema_validators()
    for name in FORMATS:
        lines = [json.loads(x) for x in (out / f"{name}.jsonl").read_text().splitlines()]
        assert len(lines) == manifest["formats"][name]["records"] == records
        for line in lines:
            validators[name].validate(line)
            roles = [m["role"] for m in line["messages"]]
            assert roles == ["user", "assistant"] * (len(roles) // 2)
    return manifest


async def test_export_of_opted_in_tenants(rig: Rig, tmp_path: Path) -> None:
    redacting = Client(rig.channel, await create_key(rig.stack, REDACTING, "ana"))
    first = await redacting.chat("What does the pro plan cost?")
    assert first.started is not None
    second = await redacting.chat(
        f"Send the invoice to {EMAIL} please", first.started.started.conversation_id
    )
    assert second.started is not None
    await _rate(redacting, second.started, True, 5)
    plain = Client(rig.channel, await create_key(rig.stack, PLAIN, "bo"))
    liked = await plain.chat("How do I reset my password?")
    disliked = await plain.chat("Why is the sky green?")
    assert liked.started is not None and disliked.started is not None
    await _rate(plain, liked.started, True, 0)  # thumbs up without a score: rating 5
    await _rate(plain, disliked.started, False, 0)  # rating 1: below --min-rating 3
    closed = Client(rig.channel, await create_key(rig.stack, CLOSED, "cy"))
    secret = await closed.chat(f"My {CANARY} question")
    assert secret.started is not None
    await _rate(closed, secret.started, True, 5)

    # Every opted-in tenant, through Persistence.
    out = tmp_path / "all"
    result = await asyncio.to_thread(_export, rig, out)
    assert result.returncode == 0, result.stderr
    manifest = _check_files(out, 2)
    assert manifest["tenants"] == {REDACTING: 1, PLAIN: 1}
    assert manifest["redacted_tenants"] == [REDACTING]
    assert manifest["variants"] == {"default": 2}
    assert json.loads(result.stdout) == manifest
    everything = "".join(p.read_text() for p in out.iterdir())
    assert CANARY not in everything and CLOSED not in everything
    assert EMAIL not in everything
    lines = [json.loads(x) for x in (out / f"{ANTHROPIC}.jsonl").read_text().splitlines()]
    masked = next(line for line in lines if len(line["messages"]) == 4)
    # The branch: both turns of the conversation, the question masked.
    assert masked["messages"][0]["content"] == "What does the pro plan cost?"
    assert masked["messages"][2]["content"] == "Send the invoice to [EMAIL] please"

    # A tenant admin, through the Gateway's AdminService: their tenant only.
    admin_key = await create_key(rig.stack, PLAIN, "boss", roles=("admin",))
    mine = tmp_path / "mine"
    result = await asyncio.to_thread(_export, rig, mine, "--api-key", admin_key)
    assert result.returncode == 0, result.stderr
    assert _check_files(mine, 1)["tenants"] == {PLAIN: 1}

    async def audited() -> bool:
        async with rig.stack.channel("persistence") as channel:
            page = await PersistenceClient(channel).audit.ListAuditRecords(
                audit_pb2.ListAuditRecordsRequest(page_size=1000), timeout=10
            )
        return any(
            r.event.action == "dataset.export" and r.event.tenant_id == PLAIN for r in page.records
        )

    await poll(audited)

    # A tenant that did not opt in, asked for by name: refused, nothing exported.
    refused = await asyncio.to_thread(_export, rig, tmp_path / "closed", "--tenant", CLOSED)
    assert refused.returncode != 0
    assert "FAILED_PRECONDITION" in refused.stderr


async def test_the_admin_rpc_is_for_opted_in_admins_only(rig: Rig) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(rig.channel)
    request = admin_pb2.ListRatedAnswersRequest(min_rating=1)
    request.since.FromDatetime(datetime.now(UTC) - timedelta(hours=1))
    cases = [
        (await create_key(rig.stack, PLAIN, "user"), request, grpc.StatusCode.PERMISSION_DENIED),
        (
            await create_key(rig.stack, CLOSED, "boss", roles=("admin",)),
            request,
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (
            await create_key(rig.stack, PLAIN, "boss2", roles=("admin",)),
            admin_pb2.ListRatedAnswersRequest(min_rating=3),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    for key, case, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await admin.ListRatedAnswers(
                case, metadata=(("authorization", f"Bearer {key}"),), timeout=10
            )
        assert raised.value.code() is code, raised.value.details()
    # The internal RPC checks its arguments the same way.
    async with rig.stack.channel("persistence") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await PersistenceClient(channel).analytics.ListRatedAnswers(
                analytics_pb2.ListRatedAnswersRequest(min_rating=9, since=request.since),
                timeout=10,
            )
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
