"""The context of an answer on one branch of a conversation tree (docs/conversation-tree.md):
the history is the recent window of the branch the answer follows (read from Persistence,
agent/recent_turns.py), nothing recalled that is in that window already is repeated, and once
a conversation has branches nothing recalled from its other branches reaches the model."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from chatplane.agent.llm.base import ContextPassage, Speaker
from chatplane.agent.memory_client import Recollection
from chatplane.agent.recent_turns import RecentWindow
from chatplane.common import errors
from chatplane.common.ids import is_valid_id
from chatplane.v1 import resources_pb2

_SPEAKERS = {resources_pb2.ROLE_USER: Speaker.USER, resources_pb2.ROLE_ASSISTANT: Speaker.ASSISTANT}


@dataclass(frozen=True, slots=True)
class BranchLine:
    """A message of the branch the Gateway sends (from BeginTurn); `text` is None when it was
    not stored yet. Its ids say which recalled items are on the branch."""

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
    """The recollection without the items recalled from this conversation that are not on the
    branch (siblings, their descendants)."""
    on_branch_ids = {line.message_id for line in branch}
    return _passages_kept(
        recollection,
        lambda index, passage: (
            index >= len(recollection.passage_conversations)
            or recollection.passage_conversations[index] != conversation_id
            or passage.source_id in on_branch_ids
        ),
    )


def with_recent(recollection: Recollection, recent: RecentWindow) -> Recollection:
    """The recollection with the recent window as its history, and without recalled items
    that are in the window already; degraded when either part is."""
    in_window = set(recent.message_ids)
    kept = _passages_kept(recollection, lambda _, passage: passage.source_id not in in_window)
    return dataclasses.replace(
        kept,
        history=list(recent.history),
        history_ids=list(recent.message_ids),
        degraded=recollection.degraded or recent.degraded,
    )


def _passages_kept(
    recollection: Recollection, keep: Callable[[int, ContextPassage], bool]
) -> Recollection:
    kept = [i for i, passage in enumerate(recollection.passages) if keep(i, passage)]
    conversations = recollection.passage_conversations
    return dataclasses.replace(
        recollection,
        passages=[recollection.passages[i] for i in kept],
        citations=[recollection.citations[i] for i in kept],
        passage_conversations=[conversations[i] for i in kept if i < len(conversations)],
    )
