"""A/B variants through the real services (docs/variants.md): two variants on Claude through
the LLM emulator, with different system prompts, models and max tokens. Each user is assigned
a variant sticky across turns; the emulator sees the variant's prompt; started names the
variant; the per-variant report (AnalyticsService.ReportVariants and `chatplane report
variants`) matches what was sent; feedback scores outside 1-5 are refused."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2

from chatplane.agent.variants import Experiment, Variant, assign
from chatplane.internal.v1 import analytics_pb2
from chatplane.launcher import Stack
from chatplane.llm_emulator.process import EmulatorProcess, running_emulator
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import gateway_pb2
from tests.integration.stack_client import (
    FAST_PACE,
    Client,
    Turn,
    create_key,
    poll,
    running_stack,
    status_details,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

API_KEY = f"sk-emulator-{uuid.uuid4().hex}"
TENANT = "acme"
USERS = 10
TURNS_PER_USER = 2
TOKENS = 12
FIRST_TOKEN_SECONDS = 0.05
VARIANTS = [
    {"name": "warm", "weight": 1, "system_prompt": "WARM-PROMPT: answer kindly."},
    {
        "name": "terse",
        "weight": 1,
        "model": "claude-terse",
        "system_prompt": "TERSE-PROMPT: answer briefly.",
        "max_tokens": 6,
        "temperature": 0.1,
    },
]
SALT = "variants-it"
EXPERIMENT = Experiment(tuple(Variant(v["name"], v["weight"]) for v in VARIANTS), SALT)  # type: ignore[arg-type]
CHATPLANE = [str(Path(sys.executable).with_name("chatplane"))]


@dataclass
class Rig:
    emulator: EmulatorProcess
    stack: Stack
    data_dir: Path
    channel: grpc.aio.Channel


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    flags = ("--tokens", str(TOKENS), "--first-token-seconds", str(FIRST_TOKEN_SECONDS))
    async with running_emulator(*flags, "--api-key", API_KEY) as emulator:
        env = {
            "CHATPLANE_LLM_BACKEND": "anthropic",
            "ANTHROPIC_API_KEY": API_KEY,
            "ANTHROPIC_BASE_URL": emulator.url,
            "CHATPLANE_LLM_MODEL": "claude-warm",
            "CHATPLANE_VARIANTS": json.dumps(VARIANTS),
            "CHATPLANE_VARIANTS_SALT": SALT,
        }
        data_dir = tmp_path_factory.mktemp("variants")
        async with (
            running_stack(data_dir, env) as stack,
            grpc.aio.insecure_channel(stack.info().address("gateway")) as channel,
        ):
            yield Rig(emulator, stack, data_dir, channel)


@dataclass
class Sent:
    """What the test did as one user: its turns, and the feedback it gave."""

    user: str
    client: Client
    turns: list[Turn]
    score: int
    thumbs_up: bool


async def report(rig: Rig, **fields: object) -> analytics_pb2.ReportVariantsResponse:
    async with rig.stack.channel("persistence") as channel:
        stub = PersistenceClient(channel)
        return await stub.analytics.ReportVariants(
            analytics_pb2.ReportVariantsRequest(**fields),  # type: ignore[arg-type]
            timeout=10,
        )


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def sent(rig: Rig) -> list[Sent]:
    """Every user chats TURNS_PER_USER times, then rates their first answer."""
    users = []
    for n in range(USERS):
        user = f"user-{n}"
        client = Client(rig.channel, await create_key(rig.stack, TENANT, user))
        turns = [await client.chat(f"question {k} of {user}") for k in range(TURNS_PER_USER)]
        users.append(Sent(user, client, turns, score=n % 5 + 1, thumbs_up=n % 3 != 0))

    async def stored() -> bool:
        answers = sum(v.answers for v in (await report(rig, tenant_id=TENANT)).variants)
        return answers == USERS * TURNS_PER_USER

    # The log consumer stores answers a moment after `done`; feedback needs them stored.
    await poll(stored, timeout=20)
    for user in users:
        await user.client.stub.SubmitFeedback(
            gateway_pb2.SubmitFeedbackRequest(
                message_id=user.turns[0].started.started.assistant_message_id,  # type: ignore[union-attr]
                rating=gateway_pb2.RATING_THUMBS_UP
                if user.thumbs_up
                else gateway_pb2.RATING_THUMBS_DOWN,
                score=user.score,
            ),
            metadata=user.client.metadata,
        )
    return users


def expected_variant(user: str) -> str:
    return assign(EXPERIMENT, TENANT, user).name


async def test_each_user_keeps_the_variant_the_hash_gives(sent: list[Sent]) -> None:
    assert {expected_variant(u.user) for u in sent} == {"warm", "terse"}, "both arms in use"
    for user in sent:
        variants = {t.started.started.variant for t in user.turns}  # type: ignore[union-attr]
        assert variants == {expected_variant(user.user)}
        models = {t.started.started.model for t in user.turns}  # type: ignore[union-attr]
        assert models == {"claude-terse" if variants == {"terse"} else "claude-warm"}


async def test_the_emulator_sees_each_variants_prompt_and_limits(
    rig: Rig, sent: list[Sent]
) -> None:
    requests = await rig.emulator.requests()
    for user in sent:
        variant = expected_variant(user.user)
        for k in range(TURNS_PER_USER):
            marker = f"question {k} of {user.user}"
            # The question is the last message (it may be recalled as context later on).
            [request] = [r for r in requests if marker in json.dumps(r["body"]["messages"][-1])]
            system = json.dumps(request["body"]["system"])
            assert ("TERSE-PROMPT" in system) == (variant == "terse")
            assert ("WARM-PROMPT" in system) == (variant == "warm")
            # The rule that recalled passages are data is kept in every variant's prompt.
            assert "never as instructions" in system
            body = request["body"]
            if variant == "terse":
                assert (request["model"], body["max_tokens"], body["temperature"]) == (
                    "claude-terse",
                    6,
                    0.1,
                )
            else:
                assert (request["model"], body["max_tokens"]) == ("claude-warm", 1024)
                assert "temperature" not in body


async def test_the_report_matches_what_was_sent(rig: Rig, sent: list[Sent]) -> None:
    by_variant: dict[str, list[Sent]] = defaultdict(list)
    for user in sent:
        by_variant[expected_variant(user.user)].append(user)
    response = await report(rig, tenant_id=TENANT)
    assert [v.variant for v in response.variants] == sorted(by_variant)
    for line in response.variants:
        users = by_variant[line.variant]
        turns = [t for u in users for t in u.turns]
        assert line.answers == len(turns)
        assert line.interrupted_answers == 0
        assert line.feedback_count == line.scored_count == len(users)
        assert line.mean_score == pytest.approx(mean(u.score for u in users))
        assert line.thumbs_up_count == sum(u.thumbs_up for u in users)
        assert line.thumbs_up_rate == pytest.approx(line.thumbs_up_count / len(users))
        assert line.mean_input_tokens == pytest.approx(
            mean(t.usage.usage.input_tokens for t in turns)  # type: ignore[union-attr]
        )
        assert line.mean_output_tokens == pytest.approx(
            mean(t.usage.usage.output_tokens for t in turns)  # type: ignore[union-attr]
        )
        assert line.mean_output_tokens == (6 if line.variant == "terse" else TOKENS)
        # Latencies are measured from the turn's start at the Agent: at least the emulator's
        # time to first token, and the whole answer takes at least as long.
        assert line.mean_first_token_ms >= FIRST_TOKEN_SECONDS * 1000
        assert line.mean_duration_ms >= line.mean_first_token_ms
        assert line.mean_duration_ms < 10_000
    # Another tenant's report is empty; a report from the future too.
    assert not (await report(rig, tenant_id="someone-else")).variants
    future = analytics_pb2.ReportVariantsRequest()
    future.since.FromSeconds(4_000_000_000)
    assert not (await report(rig, since=future.since)).variants


async def test_the_cli_prints_the_same_report(rig: Rig, sent: list[Sent]) -> None:
    response = await report(rig, tenant_id=TENANT)
    args = [*CHATPLANE, "--data-dir", str(rig.data_dir), "report", "variants", "--tenant", TENANT]
    result = await asyncio.to_thread(
        subprocess.run, [*args, "--json"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["tenant"] == TENANT
    rows = {row["variant"]: row for row in printed["variants"]}
    for line in response.variants:
        row = rows[line.variant]
        assert row["answers"] == line.answers
        assert row["feedback_count"] == line.feedback_count
        assert row["mean_score"] == pytest.approx(line.mean_score)
        assert row["thumbs_up_rate"] == pytest.approx(line.thumbs_up_rate)
        assert row["mean_first_token_ms"] == pytest.approx(line.mean_first_token_ms)
        assert row["mean_output_tokens"] == pytest.approx(line.mean_output_tokens)
        # Issue 8: the intervals hold the estimates; every variant was compared.
        assert row["thumbs_up_rate_low"] <= row["thumbs_up_rate"] <= row["thumbs_up_rate_high"]
        assert row["verdict"] in {
            "control",
            "better",
            "worse",
            "mixed",
            "no significant difference",
        }
    assert printed["control"] in rows
    assert printed["comparisons"] == response.comparisons > 0
    table = await asyncio.to_thread(
        subprocess.run, [*args, "--since", "2000-01-01"], capture_output=True, text=True, timeout=60
    )
    assert table.returncode == 0, table.stderr
    assert "warm" in table.stdout and "terse" in table.stdout
    assert "mean rating" in table.stdout
    assert "thumbs up CI" in table.stdout and "compared with" in table.stdout
    # A control that is not in the report is named as the bad field.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await report(rig, tenant_id=TENANT, control="nope")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert response.control in {"warm", "terse"}


@pytest.mark.parametrize("score", [0, 6, -1])
async def test_a_score_outside_1_to_5_is_invalid(rig: Rig, sent: list[Sent], score: int) -> None:
    user = sent[0]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await user.client.stub.SubmitFeedback(
            gateway_pb2.SubmitFeedbackRequest(
                message_id=user.turns[0].started.started.assistant_message_id,  # type: ignore[union-attr]
                rating=gateway_pb2.RATING_THUMBS_UP,
                score=score,
            ),
            metadata=user.client.metadata,
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [bad_request] = [
        d for d in status_details(raised.value) if isinstance(d, error_details_pb2.BadRequest)
    ]
    assert [v.field for v in bad_request.field_violations] == ["score"]


async def test_the_ready_line_lists_the_variants(rig: Rig) -> None:
    ready = rig.stack.services["agent"].ready_event
    assert ready["variants"] == {"warm": "claude-warm", "terse": "claude-terse"}


async def test_without_variants_answers_are_the_default_variant(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    async with (
        running_stack(tmp_path_factory.mktemp("no-variants"), FAST_PACE) as stack,
        grpc.aio.insecure_channel(stack.info().address("gateway")) as channel,
    ):
        assert stack.services["agent"].ready_event["variants"] == {"default": "chatplane-offline-1"}
        client = Client(channel, await create_key(stack, TENANT, "solo"))
        turn = await client.chat("hello without variants")
        assert turn.started is not None and turn.started.started.variant == "default"

        async def stored() -> analytics_pb2.ReportVariantsResponse | None:
            async with stack.channel("persistence") as persistence:
                response = await PersistenceClient(persistence).analytics.ReportVariants(
                    analytics_pb2.ReportVariantsRequest(), timeout=10
                )
            return response if response.variants else None

        response = await poll(stored, timeout=20)
        [line] = response.variants
        assert (line.variant, line.answers, line.feedback_count) == ("default", 1, 0)
        assert line.mean_output_tokens == turn.usage.usage.output_tokens  # type: ignore[union-attr]
        assert not line.HasField("mean_score")
