"""Feedback dataset files (docs/datasets.md): every line validates against the repo's JSON
schemas of the Anthropic Messages and OpenAI chat formats, branches are normalised to
alternating turns, and the manifest counts what was written."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from chatplane.datasets.export import MANIFEST, METADATA, DatasetWriter, ExportRange
from chatplane.datasets.formats import ANTHROPIC, FORMATS, OPENAI, SCHEMAS, turns
from chatplane.v1 import admin_resources_pb2, gateway_pb2, resources_pb2

USER, ASSISTANT = resources_pb2.ROLE_USER, resources_pb2.ROLE_ASSISTANT


def schema_validators() -> dict[str, jsonschema.protocols.Validator]:
    """A validator per format, from the schemas in the repo (themselves checked first)."""
    validators = {}
    for name in FORMATS:
        schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        validators[name] = jsonschema.Draft202012Validator(schema)
    return validators


def _answer(
    tenant: str, variant: str, rating: int, *messages: tuple[int, str], redacted: bool = False
) -> admin_resources_pb2.RatedAnswer:
    answer = admin_resources_pb2.RatedAnswer(
        tenant_id=tenant,
        conversation_id="c",
        message_id=f"m-{tenant}-{rating}",
        variant=variant,
        thumbs=gateway_pb2.RATING_THUMBS_UP,
        rating=rating,
        messages=[admin_resources_pb2.DatasetMessage(role=r, text=t) for r, t in messages],
        redacted=redacted,
    )
    answer.create_time.FromDatetime(datetime(2026, 11, rating, tzinfo=UTC))
    return answer


def test_branches_become_alternating_turns_or_are_skipped() -> None:
    assert turns(
        [
            admin_resources_pb2.DatasetMessage(role=ASSISTANT, text="Welcome!"),  # before any user
            admin_resources_pb2.DatasetMessage(role=USER, text="hi"),
            admin_resources_pb2.DatasetMessage(role=USER, text="  "),  # empty
            admin_resources_pb2.DatasetMessage(role=USER, text="anyone?"),
            admin_resources_pb2.DatasetMessage(role=ASSISTANT, text="yes"),
        ]
    ) == [("user", "hi\n\nanyone?"), ("assistant", "yes")]
    assert turns([admin_resources_pb2.DatasetMessage(role=ASSISTANT, text="alone")]) is None
    assert turns([admin_resources_pb2.DatasetMessage(role=USER, text="no answer")]) is None


def test_written_files_validate_and_the_manifest_counts_them(tmp_path: Path) -> None:
    asked = ExportRange(datetime(2026, 11, 1, tzinfo=UTC), None, 3, None)
    writer = DatasetWriter(tmp_path, asked)
    answers = [
        _answer("acme", "a@1", 5, (USER, "q"), (ASSISTANT, "a")),
        _answer(
            "acme",
            "b@2",
            4,
            (USER, "q1"),
            (ASSISTANT, "a1"),
            (USER, "q2 [EMAIL]"),
            (ASSISTANT, "a2"),
            redacted=True,
        ),
        _answer("beta", "a@1", 3, (USER, "ü ✓"), (ASSISTANT, "ok")),
        _answer("beta", "a@1", 2, (ASSISTANT, "no question")),  # skipped
    ]
    assert [writer.add(a) for a in answers] == [True, True, True, False]
    manifest = writer.close()
    assert json.loads((tmp_path / MANIFEST).read_text()) == manifest
    assert manifest["complete"] is True
    assert (manifest["records"], manifest["skipped"]) == (3, 1)
    assert manifest["tenants"] == {"acme": 2, "beta": 1}
    assert manifest["variants"] == {"a@1": 2, "b@2": 1}
    assert manifest["redacted_tenants"] == ["acme"]
    assert manifest["date_range"] == {
        "first": "2026-11-03T00:00:00+00:00",
        "last": "2026-11-05T00:00:00+00:00",
    }
    validators = schema_validators()
    lines: dict[str, list[dict[str, Any]]] = {}
    for name in FORMATS:
        assert manifest["formats"][name] == {"file": f"{name}.jsonl", "records": 3}
        lines[name] = [json.loads(x) for x in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        assert len(lines[name]) == 3
        for record in lines[name]:
            validators[name].validate(record)
    assert len((tmp_path / METADATA).read_text().splitlines()) == 3
    assert lines[ANTHROPIC][1]["messages"][2] == {"role": "user", "content": "q2 [EMAIL]"}
    # OpenAI: only the rated (last) answer is trained on.
    assert [m.get("weight") for m in lines[OPENAI][1]["messages"]] == [None, 0, None, 1]
    assert lines[ANTHROPIC][2]["messages"][0]["content"] == "ü ✓"


@pytest.mark.parametrize(
    ("name", "record"),
    [
        (
            ANTHROPIC,
            {
                "messages": [
                    {"role": "assistant", "content": "first"},
                    {"role": "user", "content": "x"},
                ]
            },
        ),
        (
            ANTHROPIC,
            {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]},
        ),
        (ANTHROPIC, {"messages": [{"role": "user", "content": "q"}], "extra": 1}),
        (
            OPENAI,
            {
                "messages": [
                    {"role": "user", "content": "q", "weight": 1},
                    {"role": "assistant", "content": "a"},
                ]
            },
        ),
        (
            OPENAI,
            {"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q"}]},
        ),
        (
            OPENAI,
            {"messages": [{"role": "tool", "content": "q"}, {"role": "assistant", "content": "a"}]},
        ),
    ],
)
def test_the_schemas_refuse_malformed_lines(name: str, record: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        schema_validators()[name].validate(record)
