"""A rated answer's branch as one line of each dataset format (docs/datasets.md): the
Anthropic Messages shape and the OpenAI chat fine-tuning format. Both want user and
assistant turns alternating, the user first and the rated answer last."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chatplane.v1 import admin_resources_pb2, resources_pb2

ANTHROPIC = "anthropic_messages"
OPENAI = "openai_chat"
FORMATS = (ANTHROPIC, OPENAI)
SCHEMAS = Path(__file__).parent / "schemas"

_ROLES = {resources_pb2.ROLE_USER: "user", resources_pb2.ROLE_ASSISTANT: "assistant"}


def turns(messages: Sequence[admin_resources_pb2.DatasetMessage]) -> list[tuple[str, str]] | None:
    """The branch as alternating (role, text) turns: empty texts dropped, consecutive
    messages of one role joined by a blank line, anything before the first user message
    dropped. None when no user turn precedes the final assistant turn."""
    out: list[tuple[str, str]] = []
    for message in messages:
        role, text = _ROLES.get(message.role), message.text.strip()
        if role is None or not text or (not out and role != "user"):
            continue
        if out and out[-1][0] == role:
            out[-1] = (role, f"{out[-1][1]}\n\n{text}")
        else:
            out.append((role, text))
    if len(out) < 2 or out[-1][0] != "assistant":
        return None
    return out


def anthropic_record(conversation: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """One line of the Anthropic Messages file."""
    return {"messages": [{"role": role, "content": text} for role, text in conversation]}


def openai_record(conversation: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """One line of the OpenAI chat file: only the rated (last) answer has weight 1."""
    last = len(conversation) - 1
    messages: list[dict[str, Any]] = []
    for index, (role, text) in enumerate(conversation):
        message: dict[str, Any] = {"role": role, "content": text}
        if role == "assistant":
            message["weight"] = 1 if index == last else 0
        messages.append(message)
    return {"messages": messages}


RECORDS = {ANTHROPIC: anthropic_record, OPENAI: openai_record}
