"""An answer's context on one branch of a conversation tree: the recent window (from
Persistence) is the history, nothing recalled that is in it is repeated, and nothing recalled
from the conversation's other branches is kept."""

from __future__ import annotations

from chatplane.agent.branch_context import BranchLine, branch_lines, on_branch, with_recent
from chatplane.agent.llm.base import ContextPassage, HistoryLine, Speaker
from chatplane.agent.memory_client import Recollection
from chatplane.agent.recent_turns import RecentWindow
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


def test_siblings_are_not_recalled_and_the_window_is_the_history() -> None:
    ancestor, recent, sibling, elsewhere = new_id(), new_id(), new_id(), new_id()
    recollection = Recollection(
        history=[],
        passages=[
            ContextPassage(sibling, "t", "a sibling"),
            ContextPassage(ancestor, "t", "an old ancestor"),
            ContextPassage(elsewhere, "t", "another conversation"),
            ContextPassage(recent, "t", "just finished"),
            ContextPassage("doc#1", "d", "a document"),
        ],
        citations=[
            resources_pb2.Citation(source_id=s)
            for s in (sibling, ancestor, elsewhere, recent, "doc#1")
        ],
        degraded=False,
        passage_conversations=[CONVERSATION, CONVERSATION, new_id(), CONVERSATION, ""],
    )
    branch = (
        BranchLine(ancestor, Speaker.USER, "an old ancestor"),
        BranchLine(recent, Speaker.ASSISTANT, None),
    )
    window = RecentWindow(
        history=[HistoryLine(Speaker.ASSISTANT, "just finished")], message_ids=[recent]
    )
    result = with_recent(on_branch(recollection, branch, CONVERSATION), window)
    assert [line.text for line in result.history] == ["just finished"]
    assert list(result.history_ids) == [recent]
    # The recent answer is in the window already: not repeated as a recalled passage.
    assert [p.source_id for p in result.passages] == [ancestor, elsewhere, "doc#1"]
    assert [c.source_id for c in result.citations] == [ancestor, elsewhere, "doc#1"]
    assert list(result.passage_conversations) == [CONVERSATION, result.passage_conversations[1], ""]
    assert not result.degraded
    assert with_recent(recollection, RecentWindow((), (), degraded=True)).degraded
