"""The context of an answer on one branch of a conversation tree (docs/conversation-tree.md):
once a conversation has branches, its newest messages may belong to other branches, so the
history is the branch the Gateway sends (the answer's ancestors), and nothing recalled from
this conversation's other branches reaches the model."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from chatplane.agent.llm.base import HistoryLine, Speaker
from chatplane.agent.memory_client import Recollection
from chatplane.common import errors
from chatplane.common.ids import is_valid_id
from chatplane.v1 import resources_pb2

_SPEAKERS = {resources_pb2.ROLE_USER: Speaker.USER, resources_pb2.ROLE_ASSISTANT: Speaker.ASSISTANT}


@dataclass(frozen=True, slots=True)
class BranchLine:
    """A message of the branch; `text` is None when it was not stored yet (its turn had just
    finished) and must come from memory's recent messages."""

    message_id: str
    speaker: Speaker
    text: str | None


def branch_lines(branch: resources_pb2.BranchHistory) -> tuple[BranchLine, ...]:
    """The branch of a GenerateRequest, oldest first."""
    lines = []
    for message in branch.messages:
        speaker = _SPEAKERS.get(message.role)
        if speaker is None or not is_valid_id(message.message_id):
            raise errors.InvalidArgument("branch.messages", "need a message id and a role")
        stored = message.status != resources_pb2.MESSAGE_STATUS_UNSPECIFIED
        lines.append(BranchLine(message.message_id, speaker, message.text if stored else None))
    return tuple(lines)


def on_branch(
    recollection: Recollection, branch: Sequence[BranchLine], conversation_id: str
) -> Recollection:
    """The recollection restricted to the branch: its history is the branch (texts not stored
    yet are taken from memory's recent messages, or left out), and recalled items of this
    conversation that are not on the branch (siblings, their descendants) are dropped."""
    recent = dict(zip(recollection.history_ids, recollection.history, strict=False))
    history: list[HistoryLine] = []
    history_ids: list[str] = []
    for line in branch:
        if line.text is not None:
            history.append(HistoryLine(speaker=line.speaker, text=line.text))
        elif line.message_id in recent:
            history.append(recent[line.message_id])
        else:
            continue
        history_ids.append(line.message_id)
    on_branch_ids = {line.message_id for line in branch}
    kept = [
        index
        for index, passage in enumerate(recollection.passages)
        if index >= len(recollection.passage_conversations)
        or recollection.passage_conversations[index] != conversation_id
        or passage.source_id in on_branch_ids
    ]
    return dataclasses.replace(
        recollection,
        history=history,
        history_ids=history_ids,
        passages=[recollection.passages[i] for i in kept],
        citations=[recollection.citations[i] for i in kept],
        passage_conversations=[recollection.passage_conversations[i] for i in kept],
    )
