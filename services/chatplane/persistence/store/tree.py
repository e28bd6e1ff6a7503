"""The conversation tree (docs/conversation-tree.md), computed the same way for every store from
a skeleton of a conversation: its stored messages (ids, roles, recorded parents) in creation
order and its reserved turns. Regenerated answers and edited user messages are siblings under
one parent; the active branch runs from the first message to the conversation's active leaf.

Messages recorded before trees existed have no parent: an assistant message then follows the
user message it answers, a user message the message stored just before it, so an old
conversation is one linear chain. A parent that is not stored (its turn is still running, or
failed and never will be) stands for the nearest stored message above it, found through the
turns, so the tree is always made of stored messages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from chatplane.common import errors
from chatplane.persistence.store.base import Role

ROOT = ""
"""The parent of a conversation's first messages."""

REGENERATE_FIELD = "regenerate_message_id"
EDIT_FIELD = "edit_message_id"


@dataclass(frozen=True, slots=True)
class TreeNode:
    """A stored message's place in the tree; `parent_message_id` as recorded (None: a message
    recorded before trees existed)."""

    message_id: str
    role: Role
    parent_message_id: str | None
    reply_to_message_id: str


@dataclass(frozen=True, slots=True)
class TurnNode:
    """A reserved turn: `user_message_id` is the user message it answers (for a regenerated
    answer, the stored one), `parent_message_id` that message's parent as reserved (None for
    a regenerated answer, or a turn reserved before trees existed); `live` while its lease
    runs."""

    user_message_id: str
    assistant_message_id: str
    parent_message_id: str | None
    regenerate: bool
    live: bool


@dataclass(frozen=True, slots=True)
class BranchEntry:
    """One message of a branch handed to the model: `stored` is False for a message whose
    turn is still running or just finished (its text is not in the store yet)."""

    message_id: str
    role: Role
    stored: bool


@dataclass(frozen=True, slots=True)
class TurnPlan:
    """Where a new turn goes: the parent of its new user message (for a regenerated answer,
    `reply_to_message_id` is the stored user message it answers and `parent_message_id` that
    message's parent), and whether the conversation has branches once it is reserved."""

    parent_message_id: str
    reply_to_message_id: str
    branched: bool


class ConversationTree:
    """The tree of one conversation. `nodes` are its stored messages in creation order
    (create time, then store order); `active_message_id` is the conversation's recorded
    active leaf (None: never recorded); `marked_branched` whether a regenerate or edit was
    ever reserved in it (its messages may not be stored yet)."""

    def __init__(
        self,
        nodes: Sequence[TreeNode],
        turns: Sequence[TurnNode],
        active_message_id: str | None,
        marked_branched: bool = False,
    ) -> None:
        self._marked_branched = marked_branched
        self._nodes = {node.message_id: node for node in nodes}
        self._order = {node.message_id: rank for rank, node in enumerate(nodes)}
        self._newest = nodes[-1].message_id if nodes else ROOT
        self._previous = {
            node.message_id: (nodes[rank - 1].message_id if rank else ROOT)
            for rank, node in enumerate(nodes)
        }
        self._turns_by_answer = {t.assistant_message_id: t for t in turns}
        self._turns_by_question = {t.user_message_id: t for t in turns if not t.regenerate}
        self._answers: dict[str, list[str]] = {}
        for node in nodes:
            if node.role is Role.ASSISTANT and node.reply_to_message_id:
                self._answers.setdefault(node.reply_to_message_id, []).append(node.message_id)
        self._active = active_message_id
        self._parents = {node.message_id: self._resolve(self._raw_parent(node)) for node in nodes}
        self._children: dict[str, list[str]] = {}
        for node in nodes:
            self._children.setdefault(self._parents[node.message_id], []).append(node.message_id)

    # --- reading ---------------------------------------------------------------------------

    def is_stored(self, message_id: str) -> bool:
        """True for a stored message of this conversation."""
        return message_id in self._nodes

    def role(self, message_id: str) -> Role:
        """The role of a stored message."""
        return self._nodes[message_id].role

    def parent(self, message_id: str) -> str:
        """The stored parent of a stored message (ROOT for a first message)."""
        return self._parents[message_id]

    def children(self, message_id: str) -> list[str]:
        """The stored children of a message (ROOT: the first messages), oldest first."""
        return list(self._children.get(message_id, ()))

    def siblings(self, message_id: str) -> list[str]:
        """The messages with the same parent as a stored message, itself included, oldest
        first."""
        return self.children(self._parents[message_id])

    def path(self, leaf: str) -> list[str]:
        """The stored messages from the first one down to `leaf` (a stored message or ROOT)."""
        path: list[str] = []
        seen: set[str] = set()
        current = leaf
        while current != ROOT and current not in seen:
            seen.add(current)
            path.append(current)
            current = self._parents[current]
        path.reverse()
        return path

    def active_leaf(self) -> str:
        """The newest stored message of the active branch (ROOT: nothing stored yet). A leaf
        whose answer is still running (or failed) stands for the stored message above it."""
        if self._active is None:
            return self._newest
        resolved = self._resolve(self._active)
        turn = self._turns_by_answer.get(self._active)
        if (
            turn is not None
            and not turn.live
            and not turn.regenerate
            and turn.user_message_id in self._nodes
        ):
            # A turn that ended without an answer although its question was stored (the
            # conversation is with a human, docs/handoff.md): the branch goes on through
            # the question and what was stored below it (operators' replies).
            return self.descend(turn.user_message_id)
        return resolved

    def descend(self, message_id: str) -> str:
        """The leaf reached from a stored message by always taking the newest child."""
        current = message_id
        seen = {current}
        while True:
            children = self._children.get(current)
            if not children or children[-1] in seen:
                return current
            current = children[-1]
            seen.add(current)

    @property
    def branched(self) -> bool:
        """True when some message has a sibling (or will have, once stored)."""
        return self._marked_branched or any(
            len(children) > 1 for children in self._children.values()
        )

    # --- new turns -------------------------------------------------------------------------

    def plan_continue(self) -> TurnPlan:
        """A turn continuing the active branch: its user message follows the active leaf,
        even while that leaf's answer is still being generated (it will be stored). After a
        turn that ended without an answer (a person had the conversation), it follows what
        was stored below that turn's question: the operators' replies."""
        active = self._active
        if active is None:
            parent = self._newest
        elif self.is_stored(active) or self._pending(active):
            parent = active
        else:
            parent = self.active_leaf()
        return TurnPlan(parent, "", branched=self.branched)

    def plan_regenerate(self, message_id: str) -> TurnPlan:
        """A new answer to the stored user message `message_id`."""
        self._require_user_message(message_id, REGENERATE_FIELD)
        return TurnPlan(self._parents[message_id], message_id, branched=True)

    def plan_edit(self, message_id: str) -> TurnPlan:
        """A new user message beside the stored user message `message_id`."""
        self._require_user_message(message_id, EDIT_FIELD)
        return TurnPlan(self._parents[message_id], "", branched=True)

    def branch(self, plan: TurnPlan, limit: int) -> list[BranchEntry]:
        """The newest `limit` messages of the branch a planned turn's answer follows (the
        ancestors of its user message), oldest first, including messages of turns that are
        still running (not stored yet)."""
        entries: list[BranchEntry] = []
        seen: set[str] = set()
        current = plan.parent_message_id
        while current != ROOT and current not in seen and len(entries) < limit:
            seen.add(current)
            if self.is_stored(current):
                entries.append(BranchEntry(current, self._nodes[current].role, stored=True))
                current = self._parents[current]
                continue
            turn = self._turns_by_answer.get(current)
            if turn is None or not turn.live:
                current = self._resolve(current)
                continue
            entries.append(BranchEntry(current, Role.ASSISTANT, stored=False))
            if turn.regenerate:
                current = turn.user_message_id
                continue
            if len(entries) < limit:
                entries.append(BranchEntry(turn.user_message_id, Role.USER, stored=False))
            seen.add(turn.user_message_id)
            current = turn.parent_message_id or ROOT
        entries.reverse()
        return entries

    # --- internals -------------------------------------------------------------------------

    def _require_user_message(self, message_id: str, field: str) -> None:
        if not self.is_stored(message_id):
            turn = self._turns_by_question.get(message_id)
            if turn is not None and turn.live:
                raise errors.FailedPrecondition(
                    "the message is still being answered; retry once its answer is complete"
                )
            raise errors.NotFound("message not found")
        if self._nodes[message_id].role is not Role.USER:
            raise errors.InvalidArgument(
                field, "must name a user message (an assistant message was named)"
            )

    def _pending(self, message_id: str) -> bool:
        turn = self._turns_by_answer.get(message_id)
        return turn is not None and turn.live

    def _raw_parent(self, node: TreeNode) -> str:
        if node.parent_message_id is not None:
            return node.parent_message_id
        if node.role is Role.ASSISTANT and node.reply_to_message_id:
            return node.reply_to_message_id
        return self._previous[node.message_id]

    def _resolve(self, message_id: str) -> str:
        """The stored message standing for `message_id`: itself when stored; for a message
        of an unfinished or failed turn, the stored message above it."""
        current = message_id
        seen: set[str] = set()
        while current != ROOT and current not in self._nodes:
            if current in seen:
                return ROOT
            seen.add(current)
            turn = self._turns_by_answer.get(current)
            if turn is not None and turn.regenerate:
                # An answer not stored beside others: the newest stored answer stands for it.
                answers = self._answers.get(turn.user_message_id)
                current = answers[-1] if answers else turn.user_message_id
                continue
            if turn is None:
                turn = self._turns_by_question.get(current)
            if turn is None:
                return ROOT
            current = turn.parent_message_id or ROOT
        return current
