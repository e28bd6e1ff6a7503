"""The conversation-tree reads and writes every store shares (docs/conversation-tree.md): the
active branch or the whole tree of a conversation with each message's place, switching the
active branch, and the branch a new turn's answer follows. Each store supplies the few
queries underneath (`TreeQueries`' abstract methods); the tree itself is computed by
`tree.ConversationTree`, the same for every engine."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from chatplane.common import errors
from chatplane.common.ids import is_valid_id
from chatplane.persistence.store.base import (
    BranchCursor,
    BranchMessage,
    Conversation,
    ConversationHistory,
    ConversationTreePage,
    ConversationView,
    Message,
    MessageCursor,
    Owner,
    PlacedMessage,
    TurnRequest,
    require_limit,
)
from chatplane.persistence.store.tree import (
    EDIT_FIELD,
    REGENERATE_FIELD,
    ROOT,
    BranchEntry,
    ConversationTree,
    TreeNode,
    TurnNode,
    TurnPlan,
)


@dataclass(frozen=True, slots=True)
class TreeSkeleton:
    """What a store reads to build a conversation's tree: the conversation, its recorded
    active leaf (None: never recorded), its stored messages in creation order, its turns
    whose answer is not stored, and whether a regenerate or edit was ever reserved in it."""

    conversation: Conversation
    active_message_id: str | None
    nodes: tuple[TreeNode, ...]
    turns: tuple[TurnNode, ...]
    branched: bool = False

    def tree(self) -> ConversationTree:
        """The conversation's tree."""
        return ConversationTree(self.nodes, self.turns, self.active_message_id, self.branched)


def target_of(request: TurnRequest) -> tuple[str, str]:
    """The stored user message a regenerate or edit names, and the request field naming it
    (("", "") for a turn that continues the active branch)."""
    if request.regenerate_message_id and request.edit_message_id:
        raise errors.InvalidArgument(EDIT_FIELD, f"cannot be combined with {REGENERATE_FIELD}")
    if request.regenerate_message_id:
        return request.regenerate_message_id, REGENERATE_FIELD
    if request.edit_message_id:
        return request.edit_message_id, EDIT_FIELD
    return "", ""


def require_target(
    target: str,
    found: tuple[str, Owner] | None,
    owner: Owner,
    conversation_id: str,
    live_turn: bool,
) -> str:
    """The conversation of a regenerate or edit target, given where it is stored (`found`:
    its conversation and owner) and whether an unfinished turn of the owner has it as its user
    message. Someone else's, unknown or malformed → NotFound; still being answered →
    FailedPrecondition."""
    if not is_valid_id(target):
        raise errors.NotFound("message not found")
    if found is None:
        if live_turn:
            raise errors.FailedPrecondition(
                "the message is still being answered; retry once its answer is complete"
            )
        raise errors.NotFound("message not found")
    target_conversation, target_owner = found
    if target_owner != owner or (conversation_id and conversation_id != target_conversation):
        raise errors.NotFound("message not found")
    return target_conversation


def plan_turn(tree: ConversationTree, request: TurnRequest) -> TurnPlan:
    """Where the requested turn goes in the tree."""
    if request.regenerate_message_id:
        return tree.plan_regenerate(request.regenerate_message_id)
    if request.edit_message_id:
        return tree.plan_edit(request.edit_message_id)
    return tree.plan_continue()


def branch_messages(
    entries: Sequence[BranchEntry], texts: Mapping[str, str]
) -> tuple[BranchMessage, ...]:
    """The branch for the model, with the texts of its stored messages."""
    return tuple(
        BranchMessage(e.message_id, e.role, texts.get(e.message_id) if e.stored else None)
        for e in entries
    )


def placed(tree: ConversationTree, message: Message) -> PlacedMessage:
    """A message with its place in the tree (a message stored after the tree was read stands
    alone under its recorded parent)."""
    if not tree.is_stored(message.message_id):
        return PlacedMessage(message, message.parent_message_id or ROOT, (message.message_id,))
    return PlacedMessage(
        message,
        tree.parent(message.message_id),
        tuple(tree.siblings(message.message_id)),
    )


class TreeQueries(abc.ABC):
    """`get_conversation_tree` and `set_active_branch` on top of a store's queries."""

    @abc.abstractmethod
    async def tree_skeleton(self, owner: Owner, conversation_id: str) -> TreeSkeleton:
        """The owner's conversation's skeleton; NotFound when it is not the owner's."""

    @abc.abstractmethod
    async def messages_by_id(self, owner: Owner, message_ids: Sequence[str]) -> dict[str, Message]:
        """The owner's stored messages among these ids."""

    @abc.abstractmethod
    async def store_active_leaf(self, owner: Owner, conversation_id: str, leaf: str) -> None:
        """Record the conversation's active leaf."""

    @abc.abstractmethod
    async def get_conversation(
        self,
        owner: Owner,
        conversation_id: str,
        *,
        limit: int,
        after: MessageCursor | None = None,
    ) -> ConversationHistory:
        """As ConversationStore.get_conversation."""

    async def get_conversation_tree(
        self,
        owner: Owner,
        conversation_id: str,
        *,
        view: ConversationView,
        limit: int,
        after: MessageCursor | BranchCursor | None = None,
    ) -> ConversationTreePage:
        """The conversation (with its active leaf) and a page of its active branch (first
        message to leaf; `after` a BranchCursor) or of its whole tree (oldest first, as
        `get_conversation`; `after` a MessageCursor), each message with its place."""
        require_limit(limit)
        if after is not None and after.conversation_id != conversation_id:
            raise ValueError("the cursor belongs to another conversation")
        if view is ConversationView.TREE:
            if isinstance(after, BranchCursor):
                raise ValueError("a branch cursor does not page the tree")
            # The page first, then the tree: every message of the page is in the tree.
            history = await self.get_conversation(owner, conversation_id, limit=limit, after=after)
            tree = (await self.tree_skeleton(owner, conversation_id)).tree()
            conversation = dataclasses.replace(
                history.conversation, active_message_id=tree.active_leaf()
            )
            return ConversationTreePage(
                conversation,
                tuple(placed(tree, m) for m in history.messages),
                history.next_cursor,
            )
        if isinstance(after, MessageCursor):
            raise ValueError("a message cursor does not page a branch")
        if not is_valid_id(conversation_id):
            raise errors.NotFound("conversation not found")
        skeleton = await self.tree_skeleton(owner, conversation_id)
        tree = skeleton.tree()
        leaf = tree.active_leaf() if after is None else after.leaf_message_id
        path = tree.path(leaf) if leaf == ROOT or tree.is_stored(leaf) else []
        offset = 0 if after is None else after.offset
        page = path[offset : offset + limit]
        stored = await self.messages_by_id(owner, page)
        messages = tuple(placed(tree, stored[i]) for i in page if i in stored)
        next_cursor = None
        if offset + limit < len(path):
            next_cursor = BranchCursor(conversation_id, leaf, offset + limit)
        conversation = dataclasses.replace(
            skeleton.conversation, active_message_id=tree.active_leaf()
        )
        return ConversationTreePage(conversation, messages, next_cursor)

    async def set_active_branch(
        self, owner: Owner, conversation_id: str, message_id: str
    ) -> Conversation:
        """Make the branch through a stored message of the conversation active: its leaf is
        reached from the message by always taking the newest child. NotFound otherwise."""
        if not is_valid_id(conversation_id):
            raise errors.NotFound("conversation not found")
        if not is_valid_id(message_id):
            raise errors.NotFound("message not found")
        skeleton = await self.tree_skeleton(owner, conversation_id)
        tree = skeleton.tree()
        if not tree.is_stored(message_id):
            raise errors.NotFound("message not found")
        leaf = tree.descend(message_id)
        await self.store_active_leaf(owner, conversation_id, leaf)
        return dataclasses.replace(skeleton.conversation, active_message_id=leaf)
