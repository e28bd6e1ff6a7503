"""The conversation-tree reads and writes of the store (docs/conversation-tree.md): the active
branch or the whole tree of a conversation with each message's place, switching the active
branch, the branch a new turn's answer follows, and the queries underneath (a conversation's
skeleton, where a regenerate or edit lands, what BeginTurn records and returns for it), run
on the caller's connection, inside its transaction where it has one. The tree itself is
computed by `tree.ConversationTree`.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

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
    Role,
    TurnRequest,
    TurnReservation,
    require_limit,
)
from chatplane.persistence.store.records import conversation_from_row
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


_Connection = psycopg.AsyncConnection[tuple[Any, ...]]

_CONVERSATION_COLUMNS = (
    "conversation_id, tenant_id, user_id, title, create_time, update_time, message_count"
)


async def skeleton(
    connection: _Connection, owner: Owner, conversation_id: str, now: datetime
) -> TreeSkeleton:
    """The owner's conversation's skeleton; NotFound when it is not the owner's. Three
    statements in one pipeline (one round trip)."""
    async with connection.pipeline():
        conversation_cursor = await connection.execute(
            f"SELECT {_CONVERSATION_COLUMNS}, active_message_id, branched FROM conversations"
            " WHERE conversation_id = %s AND tenant_id = %s AND user_id = %s",
            (conversation_id, owner.tenant_id, owner.user_id),
        )
        nodes_cursor = await connection.execute(
            "SELECT message_id, role, parent_message_id, reply_to_message_id FROM messages"
            " WHERE conversation_id = %s AND tenant_id = %s AND user_id = %s"
            " ORDER BY create_time, position",
            (conversation_id, owner.tenant_id, owner.user_id),
        )
        turns_cursor = await connection.execute(
            "SELECT coalesce(t.reply_to_message_id, t.user_message_id), t.assistant_message_id,"
            " t.parent_message_id, t.reply_to_message_id IS NOT NULL,"
            " t.lease_expire_time > %s FROM turns t"
            " WHERE t.conversation_id = %s AND t.tenant_id = %s AND t.user_id = %s"
            " AND NOT EXISTS (SELECT 1 FROM messages m"
            "  WHERE m.message_id = t.assistant_message_id)",
            (now, conversation_id, owner.tenant_id, owner.user_id),
        )
        row = await conversation_cursor.fetchone()
        node_rows = await nodes_cursor.fetchall()
        turn_rows = await turns_cursor.fetchall()
    if row is None:
        raise errors.NotFound("conversation not found")
    conversation: Conversation = conversation_from_row(row[:7])
    nodes = tuple(
        TreeNode(message_id, Role(role), parent, reply_to)
        for message_id, role, parent, reply_to in node_rows
    )
    turns = tuple(
        TurnNode(user_message_id, assistant_message_id, parent, bool(regenerate), bool(live))
        for user_message_id, assistant_message_id, parent, regenerate, live in turn_rows
    )
    return TreeSkeleton(conversation, row[7], nodes, turns, bool(row[8]))


async def target_conversation(connection: _Connection, request: TurnRequest, now: datetime) -> str:
    """For a regenerate or edit, the conversation of the message it names ("" otherwise)."""
    target, _ = target_of(request)
    if not target:
        return ""
    owner = request.owner
    cursor = await connection.execute(
        "SELECT conversation_id, tenant_id, user_id FROM messages WHERE message_id = %s",
        (target,),
    )
    row = await cursor.fetchone()
    live = False
    if row is None:
        cursor = await connection.execute(
            "SELECT 1 FROM turns WHERE user_message_id = %s AND tenant_id = %s"
            " AND user_id = %s AND reply_to_message_id IS NULL AND lease_expire_time > %s",
            (target, owner.tenant_id, owner.user_id, now),
        )
        live = await cursor.fetchone() is not None
    found = None if row is None else (row[0], Owner(row[1], row[2]))
    return require_target(target, found, owner, request.conversation_id, live)


async def place_turn(
    connection: _Connection, request: TurnRequest, conversation_id: str, now: datetime
) -> tuple[TurnPlan, ConversationTree | None]:
    """Where a new turn of the conversation goes; makes its answer the active leaf. The
    caller holds the conversation's row lock, so turns of one conversation are placed one
    at a time. A turn continuing a linear conversation after a stored or running answer
    needs no tree."""
    tree: ConversationTree | None = None
    plan = await _linear_continuation(connection, request, conversation_id, now)
    if plan is None:
        tree = (await skeleton(connection, request.owner, conversation_id, now)).tree()
        plan = plan_turn(tree, request)
    await connection.execute(
        "UPDATE conversations SET active_message_id = %s, branched = branched OR %s"
        " WHERE conversation_id = %s",
        (request.assistant_message_id, plan.branched, conversation_id),
    )
    return plan, tree


async def _linear_continuation(
    connection: _Connection, request: TurnRequest, conversation_id: str, now: datetime
) -> TurnPlan | None:
    """The plan of a turn continuing an unbranched conversation whose active leaf is stored
    or still being answered (the common case), from one statement; None otherwise."""
    if request.regenerate_message_id or request.edit_message_id:
        return None
    cursor = await connection.execute(
        "SELECT c.active_message_id, c.branched,"
        " EXISTS (SELECT 1 FROM messages m WHERE m.message_id = c.active_message_id),"
        " EXISTS (SELECT 1 FROM turns t WHERE t.assistant_message_id = c.active_message_id"
        "  AND t.lease_expire_time > %s)"
        " FROM conversations c WHERE c.conversation_id = %s",
        (now, conversation_id),
    )
    row = await cursor.fetchone()
    if row is None or row[0] is None or row[1] or not (row[2] or row[3]):
        return None
    return TurnPlan(row[0], "", branched=False)


async def details(
    connection: _Connection,
    request: TurnRequest,
    reservation: TurnReservation,
    plan: TurnPlan,
    tree: ConversationTree | None,
) -> TurnReservation:
    """An acquired reservation with what the Gateway and the Agent need of the tree: the
    parent, a regenerated answer's question, and (in a conversation with branches) the
    branch the answer follows."""
    entries = []
    if tree is not None and plan.branched:
        entries = tree.branch(plan, request.branch_limit)
    wanted = [e.message_id for e in entries if e.stored]
    if plan.reply_to_message_id:
        wanted.append(plan.reply_to_message_id)
    texts = await _texts(connection, request.owner, wanted)
    branch = branch_messages(entries, texts) if tree is not None and plan.branched else None
    return TurnReservation(
        reservation.conversation_id,
        plan.reply_to_message_id or reservation.user_message_id,
        reservation.assistant_message_id,
        acquired=reservation.acquired,
        complete=reservation.complete,
        lease_expire_time=reservation.lease_expire_time,
        parent_message_id=plan.parent_message_id,
        regenerate=bool(plan.reply_to_message_id),
        user_text=texts.get(plan.reply_to_message_id, ""),
        branch=branch,
    )


async def taken_over(
    connection: _Connection,
    request: TurnRequest,
    reservation: TurnReservation,
    now: datetime,
) -> TurnReservation:
    """A reservation taken over after its lease ran out, with the tree as it was reserved."""
    cursor = await connection.execute(
        "SELECT t.parent_message_id, t.reply_to_message_id, c.branched FROM turns t"
        " JOIN conversations c ON c.conversation_id = t.conversation_id"
        " WHERE t.assistant_message_id = %s",
        (reservation.assistant_message_id,),
    )
    row = await cursor.fetchone()
    if row is None:
        return reservation
    parent, reply_to, branched = row
    plan = TurnPlan(parent or "", reply_to or "", branched=bool(branched))
    found = await skeleton(connection, request.owner, reservation.conversation_id, now)
    return await details(connection, request, reservation, plan, found.tree())


async def _texts(connection: _Connection, owner: Owner, ids: Sequence[str]) -> dict[str, str]:
    if not ids:
        return {}
    cursor = await connection.execute(
        "SELECT message_id, text FROM messages WHERE message_id = ANY(%s::text[])"
        " AND tenant_id = %s AND user_id = %s",
        (list(ids), owner.tenant_id, owner.user_id),
    )
    return {message_id: text for message_id, text in await cursor.fetchall()}
