"""A/B variants: sticky assignment by a stable hash (the split over many synthetic users is
within statistical tolerance), validation of the variant settings, and what a variant
changes in a turn (model chain, system prompt, temperature, max tokens, retrieval k)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from chatplane.agent.llm.factory import build_model_chain
from chatplane.agent.prompt import SYSTEM_PROMPT
from chatplane.agent.variants import (
    DEFAULT_VARIANT,
    Experiment,
    FixedVariantSource,
    SettingsVariantSource,
    Variant,
    VariantRouter,
    VariantsConfigError,
    assign,
    bucket_point,
)
from chatplane.agent.variants.process import variant_router
from chatplane.agent.variants.router import CONTEXT_RULE
from chatplane.common.settings import Settings

USERS = 20_000


@pytest.fixture(autouse=True)
def no_llm_settings_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "ANTHROPIC_API_KEY",
        "CHATPLANE_ANTHROPIC_API_KEY",
        "CHATPLANE_LLM_BACKEND",
        "CHATPLANE_VARIANTS",
        "CHATPLANE_VARIANTS_FILE",
    ):
        monkeypatch.delenv(name, raising=False)


def settings(**values: object) -> Settings:
    return Settings.model_validate(values)


def experiment(*weights: float, salt: str = "exp-1") -> Experiment:
    return Experiment(tuple(Variant(f"v{i}", w) for i, w in enumerate(weights)), salt)


def split(exp: Experiment, users: int = USERS) -> Counter[str]:
    return Counter(assign(exp, "tenant-a", f"user-{n}").name for n in range(users))


@pytest.mark.parametrize("weights", [(1, 1), (70, 30), (5, 3, 2), (0.9, 0.05, 0.05)])
def test_split_follows_the_weights_within_tolerance(weights: tuple[float, ...]) -> None:
    counts = split(experiment(*weights))
    total = sum(weights)
    for index, weight in enumerate(weights):
        share = weight / total
        # A binomial count: within 4.5 standard deviations (a false alarm once in ~150,000).
        sigma = math.sqrt(USERS * share * (1 - share))
        assert abs(counts[f"v{index}"] - USERS * share) < 4.5 * sigma, (counts, weights)


def test_points_are_uniform() -> None:
    points = [bucket_point("salt", "t", f"u{n}") for n in range(USERS)]
    assert all(0 <= p < 1 for p in points)
    deciles = Counter(int(p * 10) for p in points)
    sigma = math.sqrt(USERS * 0.1 * 0.9)
    assert all(abs(deciles[d] - USERS / 10) < 4.5 * sigma for d in range(10)), deciles


def test_assignment_is_sticky_and_the_same_in_every_process() -> None:
    exp = experiment(1, 1, 1)
    first = [assign(exp, "tenant-a", f"user-{n}").name for n in range(500)]
    assert [assign(exp, "tenant-a", f"user-{n}").name for n in range(500)] == first
    # Another interpreter (its own hash seed) agrees: the hash is not Python's hash().
    script = (
        "from chatplane.agent.variants import Experiment, Variant, assign;"
        "e = Experiment(tuple(Variant(f'v{i}', 1) for i in range(3)), 'exp-1');"
        "print(','.join(assign(e, 'tenant-a', f'user-{n}').name for n in range(500)))"
    )
    other = subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        capture_output=True,
        text=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    )
    assert other.stdout.strip().split(",") == first


def test_tenant_user_and_salt_all_count() -> None:
    exp = experiment(1, 1)
    same_user_elsewhere = [
        assign(exp, "tenant-a", f"u{n}").name == assign(exp, "tenant-b", f"u{n}").name
        for n in range(2000)
    ]
    # Independent draws agree about half of the time, not always.
    assert 0.4 < sum(same_user_elsewhere) / 2000 < 0.6
    resalted = experiment(1, 1, salt="exp-2")
    same_after_resalt = [
        assign(exp, "t", f"u{n}").name == assign(resalted, "t", f"u{n}").name for n in range(2000)
    ]
    assert 0.4 < sum(same_after_resalt) / 2000 < 0.6


def test_growing_one_weight_only_moves_users_towards_it() -> None:
    before = experiment(50, 50)
    after = experiment(60, 40)
    for n in range(5000):
        old, new = assign(before, "t", f"u{n}").name, assign(after, "t", f"u{n}").name
        assert old == new or (old, new) == ("v1", "v0")


# --- settings -----------------------------------------------------------------------------


def test_no_variants_is_the_default_variant() -> None:
    exp = SettingsVariantSource(settings()).experiment()
    assert exp.names == [DEFAULT_VARIANT]
    assert assign(exp, "t", "u").identifier == "default"


def test_variants_from_json_and_from_a_yaml_file(tmp_path: Path) -> None:
    listed = [
        {"name": "control", "weight": 3},
        {
            "name": "concise",
            "weight": 1,
            "backend": "offline",
            "system_prompt": "Answer in one sentence.",
            "temperature": 0.2,
            "max_tokens": 64,
            "retrieval_k": 2,
        },
    ]
    from_json = SettingsVariantSource(settings(variants=json.dumps(listed))).experiment()
    path = tmp_path / "variants.yaml"
    path.write_text(
        "- name: control\n  weight: 3\n"
        "- name: concise\n  weight: 1\n  backend: offline\n"
        "  system_prompt: Answer in one sentence.\n  temperature: 0.2\n"
        "  max_tokens: 64\n  retrieval_k: 2\n"
    )
    from_yaml = SettingsVariantSource(settings(variants_file=str(path))).experiment()
    assert from_json == from_yaml
    assert from_json.variants[1] == Variant(
        "concise", 1, "offline", None, None, "Answer in one sentence.", 0.2, 64, 2
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("[]", "the list is empty"),
        ("not json", "CHATPLANE_VARIANTS is not JSON"),
        ('{"name": "a", "weight": 1}', "variants: Input should be a valid list"),
        ('[{"name": "a", "weight": 0}]', "variants[0].weight: Input should be greater than 0"),
        ('[{"name": "a", "weight": -2}]', "variants[0].weight"),
        ('[{"name": "a"}]', "variants[0].weight: Field required"),
        ('[{"name": "a", "weight": 1}, {"name": "a", "weight": 2}]', "'a' is used twice"),
        ('[{"name": "a@1", "weight": 1}]', "variants[0].name: String should match pattern"),
        ('[{"name": "", "weight": 1}]', "variants[0].name"),
        ('[{"name": "a", "weight": 1, "colour": "red"}]', "variants[0].colour: Extra inputs"),
        ('[{"name": "a", "weight": 1, "temperature": 3}]', "variants[0].temperature"),
        ('[{"name": "a", "weight": 1, "backend": "gpt"}]', "variants[0].backend: must be one of"),
        ('[{"name": "a", "weight": 1, "retrieval_k": -1}]', "variants[0].retrieval_k"),
    ],
)
def test_invalid_variants_are_refused_with_the_place(raw: str, message: str) -> None:
    with pytest.raises(VariantsConfigError, match=None) as caught:
        SettingsVariantSource(settings(variants=raw))
    assert message in str(caught.value)


def test_both_sources_or_a_missing_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(VariantsConfigError, match="not both"):
        SettingsVariantSource(
            settings(variants='[{"name": "a", "weight": 1}]', variants_file="x.yaml")
        )
    with pytest.raises(VariantsConfigError, match="cannot read the variants file"):
        SettingsVariantSource(settings(variants_file=str(tmp_path / "missing.yaml")))


def test_a_variant_with_an_unusable_backend_is_refused_at_start() -> None:
    config = settings(
        variants='[{"name": "claude", "weight": 1, "backend": "anthropic"}]',
    )
    with pytest.raises(VariantsConfigError, match="variant 'claude': the anthropic backend"):
        variant_router(config, build_model_chain(config))


def test_the_agent_exits_2_with_one_critical_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chatplane.agent", "--agent-port", "0"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "PATH": "",
            "CHATPLANE_DATA_DIR": str(tmp_path),
            "CHATPLANE_VARIANTS": '[{"name": "a", "weight": 0}]',
            "CHATPLANE_METRICS_PORT": "-1",
            # Never reached: the variants are refused first.
            "CHATPLANE_POSTGRES_DSN": "postgresql://chatplane@127.0.0.1:9/chatplane",
        },
    )
    assert result.returncode == 2
    output = (result.stdout + result.stderr).splitlines()
    lines = [json.loads(line) for line in output if line.startswith("{")]
    critical = [line for line in lines if line.get("level") == "CRITICAL"]
    assert len(critical) == 1, lines
    assert "variants[0].weight" in critical[0]["message"]
    # Beside the JSON log, the one line for the operator (common/entrypoint.py).
    assert [line for line in output if not line.startswith("{")] == [
        f"chatplane agent: {critical[0]['message']}"
    ]
    assert "Traceback" not in result.stderr


# --- what a variant changes ------------------------------------------------------------------


def test_router_applies_each_variant_and_shares_chains() -> None:
    config = settings(recall_top_k=4, llm_max_tokens=1024, llm_temperature=0.7)
    default_chain = build_model_chain(config)
    built: list[Settings] = []

    def build(variant_settings: Settings) -> object:
        built.append(variant_settings)
        return build_model_chain(variant_settings)

    exp = Experiment(
        (
            Variant("control", 1),
            Variant(
                "short", 1, system_prompt="Be brief.", temperature=0.1, max_tokens=50, retrieval_k=1
            ),
            Variant("offline-b", 1, backend="offline", retrieval_k=0),
            Variant("offline-c", 1, backend="offline"),
        ),
        "s",
    )
    router = VariantRouter(
        FixedVariantSource(exp),
        config,
        default_backend=default_chain,
        build_chain=build,  # type: ignore[arg-type]
    )
    # control and short use the settings' chain; the two offline variants share one.
    assert len(built) == 1
    assert built[0].llm_backend == "offline"
    applied = {}
    for n in range(200):
        variant = router.apply("t", f"u{n}")
        applied[variant.identifier] = variant
    assert set(applied) == {"control", "short", "offline-b", "offline-c"}
    control, short = applied["control"], applied["short"]
    assert control.backend is default_chain
    assert control.system_prompt == SYSTEM_PROMPT
    assert (control.temperature, control.max_tokens, control.retrieval_k) == (0.7, 1024, 4)
    assert short.backend is default_chain
    assert short.system_prompt == f"Be brief. {CONTEXT_RULE}"
    assert (short.temperature, short.max_tokens, short.retrieval_k) == (0.1, 50, 1)
    assert applied["offline-b"].backend is applied["offline-c"].backend
    assert applied["offline-b"].backend is not default_chain
    assert applied["offline-b"].retrieval_k == 0
    assert router.models == {
        "control": default_chain.model,
        "short": default_chain.model,
        "offline-b": applied["offline-b"].backend.model,
        "offline-c": applied["offline-b"].backend.model,
    }


def test_variant_identifier_can_carry_a_version() -> None:
    assert Variant("concise", 1).identifier == "concise"
    assert Variant("concise", 1, version="7").identifier == "concise@7"
