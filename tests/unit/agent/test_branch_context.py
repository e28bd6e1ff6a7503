"""An answer's context on one branch of a conversation tree: the branch is the history, texts
not stored yet come from memory's recent messages, and nothing recalled from the
conversation's other branches is kept."""

from __future__ import annotations

from chatplane.agent.branch_context import BranchLine, branch_lines, on_branch
from chatplane.agent.llm.base import ContextPassage, HistoryLine, Speaker
from chatplane.agent.memory_client import Recollection
from chatplane.common.ids import new_id
from chatplane.v1 import resources_pb2

CONVERSATION = new_id()


def test_branch_lines_keep_ids_roles_and_missing_texts() -> None:
    stored, pending = new_id(), new_id()
    branch = resources_pb2.BranchHistory(
        messages=[
            resources_pb2.Message(
                message_id=stored,
                role=resources_pb2.ROLE_USER,
                text="hi",
                status=resources_pb2.MESSAGE_STATUS_COMPLETE,
            ),
            resources_pb2.Message(message_id=pending, role=resources_pb2.ROLE_ASSISTANT),
        ]
    )
    assert branch_lines(branch) == (
        BranchLine(stored, Speaker.USER, "hi"),
        BranchLine(pending, Speaker.ASSISTANT, None),
    )


def test_the_branch_replaces_recent_messages_and_siblings_are_not_recalled() -> None:
    ancestor, pending, sibling, elsewhere = new_id(), new_id(), new_id(), new_id()
    recollection = Recollection(
        history=[
            HistoryLine(Speaker.ASSISTANT, "just finished"),
            HistoryLine(Speaker.ASSISTANT, "a sibling answer"),
        ],
        passages=[
            ContextPassage(sibling, "t", "a sibling"),
            ContextPassage(ancestor, "t", "an old ancestor"),
            ContextPassage(elsewhere, "t", "another conversation"),
            ContextPassage("doc#1", "d", "a document"),
        ],
        citations=[
            resources_pb2.Citation(source_id=s) for s in (sibling, ancestor, elsewhere, "doc#1")
        ],
        degraded=False,
        history_ids=[pending, sibling],
        passage_conversations=[CONVERSATION, CONVERSATION, new_id(), ""],
    )
    branch = (
        BranchLine(ancestor, Speaker.USER, "an old ancestor"),
        BranchLine(new_id(), Speaker.ASSISTANT, None),  # not stored, not in memory: left out
        BranchLine(pending, Speaker.ASSISTANT, None),
    )
    result = on_branch(recollection, branch, CONVERSATION)
    assert [line.text for line in result.history] == ["an old ancestor", "just finished"]
    assert [p.source_id for p in result.passages] == [ancestor, elsewhere, "doc#1"]
    assert [c.source_id for c in result.citations] == [ancestor, elsewhere, "doc#1"]
