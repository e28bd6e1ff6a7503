"""The variant registry and the evaluation harness on a running stack (docs/registry.md,
docs/eval.md): versions pushed with `chatplane variants`, a 20 % canary split sticky per user,
promotion and rollback reaching two Agent processes within 5 s (asserted by the variant each
answer records), admin-only access, and `chatplane eval` gating a candidate that drops a
required citation, on the offline responder and on Claude through the LLM emulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from chatplane.agent.variants import assign
from chatplane.agent.variants.registry_source import deployment_experiment
from chatplane.internal.v1 import analytics_pb2, audit_pb2, variant_registry_pb2
from chatplane.launcher import Stack
from chatplane.launcher.stack import ServiceProcess
from chatplane.llm_emulator.process import running_emulator
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import gateway_pb2, gateway_pb2_grpc, registry_pb2, registry_pb2_grpc
from tests.integration.stack_client import (
    FAST_PACE,
    Client,
    create_key,
    poll,
    running_stack,
    store_dsn,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROOT = Path(__file__).resolve().parents[2]
CHATPLANE = [str(Path(sys.executable).with_name("chatplane"))]
OPS = "ops"
SALT = "registry-it"
EMULATOR_KEY = f"sk-emulator-{uuid.uuid4().hex}"
SWITCH_SECONDS = 5.0


@dataclass
class Rig:
    stack: Stack
    data_dir: Path
    admin_key: str
    # Two Gateways, each in front of its own Agent process.
    gateways: tuple[grpc.aio.Channel, grpc.aio.Channel]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    data_dir = tmp_path_factory.mktemp("registry")
    async with running_emulator("--tokens", "8", "--api-key", EMULATOR_KEY) as emulator:
        env = {
            **FAST_PACE,
            "ANTHROPIC_API_KEY": EMULATOR_KEY,
            "ANTHROPIC_BASE_URL": emulator.url,
            "CHATPLANE_VARIANTS_SALT": SALT,
            "CHATPLANE_REGISTRY_ADMIN_TENANTS": json.dumps([OPS]),
            "CHATPLANE_REGISTRY_POLL_SECONDS": "0.5",
            # The eval's polls for indexed memory and the pushes share the admin key's bucket.
            "CHATPLANE_RATE_LIMIT_BURST": "1000",
        }
        async with running_stack(data_dir, env) as stack:
            info = stack.info()
            process_env = {
                **os.environ,
                "CHATPLANE_LLM_BACKEND": "offline",
                **env,
                "CHATPLANE_DATA_DIR": str(data_dir),
                "CHATPLANE_HOST": info.host,
                # The replicas share the stack's own PostgreSQL (store, log, memory).
                "CHATPLANE_POSTGRES_DSN": store_dsn(data_dir),
            }
            logs = data_dir / "logs"
            agent = await ServiceProcess.start(
                "agent",
                [
                    "--agent-port",
                    "0",
                    "--memory-address",
                    info.address("memory"),
                    "--persistence-address",
                    info.address("persistence"),
                ],
                process_env,
                logs / "agent-2.log",
            )
            gateway = await ServiceProcess.start(
                "gateway",
                [
                    "--gateway-port",
                    "0",
                    "--agent-address",
                    f"{info.host}:{agent.port}",
                    "--memory-address",
                    info.address("memory"),
                    "--persistence-address",
                    info.address("persistence"),
                ],
                process_env,
                logs / "gateway-2.log",
            )
            try:
                async with (
                    grpc.aio.insecure_channel(info.address("gateway")) as first,
                    grpc.aio.insecure_channel(f"{info.host}:{gateway.port}") as second,
                ):
                    admin_key = await create_key(stack, OPS, "ann", roles=("admin", "chat"))
                    yield Rig(stack, data_dir, admin_key, (first, second))
            finally:
                assert await gateway.stop(10) == 0
                assert await agent.stop(10) == 0


def cli(rig: Rig, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*CHATPLANE, "--data-dir", str(rig.data_dir), *args, "--api-key", rig.admin_key],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "CHATPLANE_REGISTRY_ADMIN_TENANTS": json.dumps([OPS])},
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def push(rig: Rig, tmp_path: Path, spec: dict[str, object]) -> str:
    path = tmp_path / f"{spec['name']}-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(spec))
    return cli(rig, "variants", "push", str(path)).stdout.split()[0]


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def answered_by(rig: Rig, client_key: str, gateway: int) -> str:
    turn = await Client(rig.gateways[gateway], client_key).chat("hello")
    assert turn.started is not None and turn.done is not None
    return turn.started.started.variant


async def switch_seconds(rig: Rig, key: str, expected: str) -> float:
    """Seconds until answers through both Gateways (both Agents) record `expected`."""
    start = time.monotonic()

    async def both() -> bool:
        return all([await answered_by(rig, key, g) == expected for g in (0, 1)])

    await poll(both, timeout=SWITCH_SECONDS + 5, interval=0.05)
    elapsed = time.monotonic() - start
    print(f"both Agents answer with {expected} after {elapsed:.2f} s")
    return elapsed


async def test_canary_split_promotion_and_rollback_on_two_agents(rig: Rig, tmp_path: Path) -> None:
    base = {"name": "support", "backend": "offline", "system_prompt": "Answer briefly."}
    first = push(rig, tmp_path, {**base, "temperature": 0.1})
    second = push(rig, tmp_path, {**base, "temperature": 0.7, "retrieval_k": 2})
    assert (first, second) == ("support@1", "support@2")
    assert push(rig, tmp_path, {**base, "temperature": 0.7, "retrieval_k": 2}) == "support@2"
    diff = cli(rig, "variants", "diff", first, second).stdout
    assert '-  "temperature": 0.1' in diff and '+  "temperature": 0.7' in diff
    assert '+  "retrieval_k": 2' in diff

    user_key = await create_key(rig.stack, "acme", "u-probe")
    # Before any promotion the settings' variant answers.
    assert await answered_by(rig, user_key, 0) == "default"
    cli(rig, "variants", "promote", first, "--reason", "first release")
    assert await switch_seconds(rig, user_key, first) <= SWITCH_SECONDS

    cli(rig, "variants", "promote", second, "--stage", "canary", "--share", "20")
    listed = cli(rig, "variants", "list").stdout
    assert "canary (20%)" in listed and "production (80%)" in listed

    # The split over 1,000 synthetic users, from the deployment the Agents poll, with the
    # Agent's own assignment: within 4 standard deviations of 20 % (n p = 200, sd 12.6).
    async with rig.stack.channel("persistence") as channel:
        deployment = (
            await PersistenceClient(channel).registry.GetVariantDeployment(
                variant_registry_pb2.GetVariantDeploymentRequest(), timeout=10
            )
        ).deployment
    experiment = deployment_experiment(deployment, SALT)
    assert experiment is not None
    assigned = {u: assign(experiment, "acme", u).identifier for u in map(str, range(1000))}
    in_canary = sum(v == second for v in assigned.values())
    assert 150 <= in_canary <= 250, in_canary

    # Real users through both Agents: each answer records the version the hash gives, and
    # the same version on a second turn through the other Agent (sticky per user).
    users = [f"user-{i}" for i in range(24)]
    keys = {u: await create_key(rig.stack, "acme", u) for u in users}
    expected = {u: assign(experiment, "acme", u).identifier for u in users}
    assert {second, first} <= set(expected.values())
    await poll(lambda: _answers_match(rig, keys, expected), timeout=SWITCH_SECONDS + 5)

    # Production: the canary graduates; then a rollback restores support@1.
    cli(rig, "variants", "promote", second)
    assert await switch_seconds(rig, user_key, second) <= SWITCH_SECONDS
    back = cli(rig, "variants", "rollback", "--reason", "worse ratings").stdout
    assert "rollback production: support@2 -> support@1" in back
    assert await switch_seconds(rig, user_key, first) <= SWITCH_SECONDS

    history = cli(rig, "variants", "history").stdout.splitlines()
    assert len(history) == 4
    assert "ops/user:ann  rollback production: support@2 -> support@1" in history[0]
    assert "worse ratings" in history[0]
    assert "promote canary: - -> support@2 (0% -> 20%)" in history[2]
    # The system of record keeps NAME@VERSION per answer (answer_metrics).
    async with rig.stack.channel("persistence") as channel:
        report = await PersistenceClient(channel).analytics.ReportVariants(
            analytics_pb2.ReportVariantsRequest(tenant_id="acme"), timeout=10
        )
    recorded = {row.variant: row.answers for row in report.variants}
    assert recorded.get(first, 0) > 0 and recorded.get(second, 0) > 0

    # The changes are in the hash-chained audit log too (appended by the Gateway in batches).
    async def audited() -> list[str]:
        async with rig.stack.channel("persistence") as channel:
            page = await PersistenceClient(channel).audit.ListAuditRecords(
                audit_pb2.ListAuditRecordsRequest(page_size=1000), timeout=10
            )
        actions = [
            r.event.action for r in page.records if r.event.object.startswith("variant/support@")
        ]
        return actions if len(actions) >= 6 else []

    actions = await poll(audited, timeout=10)
    assert actions.count("variant.push") == 2 and actions.count("variant.promote") == 3
    assert actions.count("variant.rollback") == 1


async def _answers_match(rig: Rig, keys: dict[str, str], expected: dict[str, str]) -> bool:
    for user, key in keys.items():
        for gateway in (0, 1):
            if await answered_by(rig, key, gateway) != expected[user]:
                return False
    return True


async def test_registry_and_pinning_are_for_admins(rig: Rig) -> None:
    registry = registry_pb2_grpc.RegistryServiceStub(rig.gateways[0])
    chat_key = await create_key(rig.stack, OPS, "bob")
    other_admin = await create_key(rig.stack, "acme", "root", roles=("admin",))
    for key in (chat_key, other_admin):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await registry.ListVariants(
                registry_pb2.ListVariantsRequest(), metadata=bearer(key), timeout=10
            )
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    pinned = gateway_pb2.ChatRequest(text="hi", variant="support@1")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in gateway_pb2_grpc.GatewayServiceStub(rig.gateways[0]).Chat(
            pinned, metadata=bearer(chat_key), timeout=10
        ):
            pass
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    admin = bearer(rig.admin_key)
    cases = [
        (registry_pb2.PushVariantRequest(spec="name: x\ntemperature: 9"), "PushVariant"),
        (registry_pb2.PushVariantRequest(spec="[1, 2"), "PushVariant"),
        (registry_pb2.GetVariantRequest(variant="support"), "GetVariant"),
        (registry_pb2.PromoteVariantRequest(variant="support@1", stage=2), "PromoteVariant"),
    ]
    for request, method in cases:
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await getattr(registry, method)(request, metadata=admin, timeout=10)
        assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT, (method, request)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await registry.GetVariant(
            registry_pb2.GetVariantRequest(variant="nope@7"), metadata=admin, timeout=10
        )
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND


def evaluate(rig: Rig, tmp_path: Path, suite: Path, *variants: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    out = tmp_path / f"eval-{uuid.uuid4().hex[:6]}.json"
    args = ["eval", "--variant", variants[0], "--suite", str(suite), "--json", str(out)]
    if len(variants) > 1:
        args += ["--baseline", variants[1]]
    result = cli(rig, *args, check=False)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(out.read_text())


async def test_eval_fails_a_candidate_that_drops_a_required_citation(
    rig: Rig, tmp_path: Path
) -> None:
    starter = ROOT / "eval" / "suites" / "starter.yaml"
    grounded = push(rig, tmp_path, {"name": "rag", "backend": "offline", "retrieval_k": 4})
    blind = push(rig, tmp_path, {"name": "rag", "backend": "offline", "retrieval_k": 0})
    tuned = push(
        rig, tmp_path, {"name": "rag", "backend": "offline", "retrieval_k": 4, "temperature": 0}
    )
    code, report = evaluate(rig, tmp_path, starter, blind, grounded)
    assert code == 1
    baseline, candidate = report["runs"][grounded], report["runs"][blind]
    assert baseline["summary"]["passed"] == 3, baseline
    missing = {c["case"]: c["missing_citations"] for c in candidate["cases"]}
    assert missing["refund-window"] == ["refunds.md"]
    assert missing["canada-carrier"] == ["shipping.md"]
    assert set(report["verdict"]["regressed_cases"]) >= {"refund-window", "canada-carrier"}
    assert all(c["variant"] == blind for c in candidate["cases"])

    code, report = evaluate(rig, tmp_path, starter, tuned, grounded)
    assert code == 0, report["verdict"]
    assert report["runs"][tuned]["summary"]["pass_rate"] == 1.0


async def test_eval_on_claude_through_the_emulator_prices_tokens(rig: Rig, tmp_path: Path) -> None:
    suite = tmp_path / "emulated.yaml"
    suite.write_text(
        json.dumps(
            {
                "name": "emulated",
                "documents": [{"name": "faq.md", "text": "# Opening hours\n\nOpen 9 to 5."}],
                "cases": [
                    {
                        "id": "hours",
                        "question": "What are the opening hours?",
                        "required_citations": ["faq.md"],
                        "expected_facts": ["emulated model"],
                        "forbidden": ["PWNED"],
                    }
                ],
            }
        )
    )
    claude = push(
        rig,
        tmp_path,
        {"name": "claude", "backend": "anthropic", "model": "claude-haiku-4-5", "max_tokens": 50},
    )
    code, report = evaluate(rig, tmp_path, suite, claude)
    assert code == 0, report
    case = report["runs"][claude]["cases"][0]
    assert case["model"] == "claude-haiku-4-5" and case["priced"]
    assert case["output_tokens"] == 8
    expected = (case["input_tokens"] * 1.0 + 8 * 5.0) / 1_000_000
    assert case["cost_usd"] == pytest.approx(expected)
