"""The conversation-tree reads and writes of the store (docs/conversation-tree.md):
`store.trees` pages the active branch or the whole tree of a conversation with each message's
place and switches the active branch; the functions below it are BeginTurn's queries (a
conversation's skeleton, where a regenerate or edit lands, the branch a new turn's answer
follows, what it records and returns), run inside the turn's transaction. The tree itself is
computed by `tree.ConversationTree`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from chatplane.common import errors
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
    require_known_id,
    require_limit,
)
from chatplane.persistence.store.database import Connection, Database, found
from chatplane.persistence.store.records import (
    CONVERSATION_COLUMNS,
    MESSAGE_COLUMNS,
    conversation_from_row,
    message_from_row,
)
from chatplane.persistence.store.tree import (
    EDIT_FIELD,
    REGENERATE_FIELD,
    ROOT,
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


class ConversationTrees:
    """Conversations' trees as history reads see them (`store.trees`); `history` is the
    store's `get_conversation`, which pages the whole tree."""

    def __init__(self, db: Database, history: Callable[..., Awaitable[ConversationHistory]]):
        self._db = db
        self._history = history

    async def skeleton(self, owner: Owner, conversation_id: str) -> TreeSkeleton:
        """The owner's conversation's skeleton; NotFound when it is not the owner's."""
        async with self._db.connection() as connection:
            return await skeleton(connection, owner, conversation_id, self._db.clock())

    async def messages_by_id(self, owner: Owner, message_ids: Sequence[str]) -> dict[str, Message]:
        """The owner's stored messages among these ids."""
        rows = await self._db.fetchall(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE message_id = ANY(%s::text[])"
            " AND tenant_id = %s AND user_id = %s",
            (list(message_ids), owner.tenant_id, owner.user_id),
        )
        return {m.message_id: m for m in map(message_from_row, rows)}

    async def page(
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
            history = await self._history(owner, conversation_id, limit=limit, after=after)
            tree = (await self.skeleton(owner, conversation_id)).tree()
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
        require_known_id(conversation_id, "conversation")
        skeleton = await self.skeleton(owner, conversation_id)
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
        require_known_id(conversation_id, "conversation")
        require_known_id(message_id, "message")
        skeleton = await self.skeleton(owner, conversation_id)
        tree = skeleton.tree()
        if not tree.is_stored(message_id):
            raise errors.NotFound("message not found")
        leaf = tree.descend(message_id)
        await self._db.execute(
            "UPDATE conversations SET active_message_id = %s"
            " WHERE conversation_id = %s AND tenant_id = %s AND user_id = %s",
            (leaf, conversation_id, owner.tenant_id, owner.user_id),
        )
        return dataclasses.replace(skeleton.conversation, active_message_id=leaf)


async def skeleton(
    connection: Connection, owner: Owner, conversation_id: str, now: datetime
) -> TreeSkeleton:
    """The owner's conversation's skeleton; NotFound when it is not the owner's. Three
    statements in one pipeline (one round trip)."""
    async with connection.pipeline():
        conversation_cursor = await connection.execute(
            f"SELECT {CONVERSATION_COLUMNS}, active_message_id, branched FROM conversations"
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
    row = found(row, "conversation")
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


async def target_conversation(connection: Connection, request: TurnRequest, now: datetime) -> str:
    """For a regenerate or edit, the conversation of the stored user message it names ("" for
    a turn that continues the active branch). Someone else's, unknown or malformed → NotFound;
    still being answered → FailedPrecondition."""
    if request.regenerate_message_id and request.edit_message_id:
        raise errors.InvalidArgument(EDIT_FIELD, f"cannot be combined with {REGENERATE_FIELD}")
    target = request.regenerate_message_id or request.edit_message_id
    if not target:
        return ""
    require_known_id(target, "message")
    owner = request.owner
    cursor = await connection.execute(
        "SELECT conversation_id, tenant_id, user_id FROM messages WHERE message_id = %s",
        (target,),
    )
    row = await cursor.fetchone()
    if row is None:
        cursor = await connection.execute(
            "SELECT 1 FROM turns WHERE user_message_id = %s AND tenant_id = %s"
            " AND user_id = %s AND reply_to_message_id IS NULL AND lease_expire_time > %s",
            (target, owner.tenant_id, owner.user_id, now),
        )
        if await cursor.fetchone() is not None:
            raise errors.FailedPrecondition(
                "the message is still being answered; retry once its answer is complete"
            )
        raise errors.NotFound("message not found")
    conversation_id = request.conversation_id
    if Owner(row[1], row[2]) != owner or (conversation_id and conversation_id != row[0]):
        raise errors.NotFound("message not found")
    return str(row[0])


async def place_turn(
    connection: Connection, request: TurnRequest, conversation_id: str, now: datetime
) -> tuple[TurnPlan, ConversationTree | None]:
    """Where a new turn of the conversation goes; makes its answer the active leaf. The
    caller holds the conversation's row lock, so turns of one conversation are placed one
    at a time. A turn continuing a linear conversation after a stored or running answer
    needs no tree."""
    tree: ConversationTree | None = None
    plan = await _linear_continuation(connection, request, conversation_id, now)
    if plan is None:
        tree = (await skeleton(connection, request.owner, conversation_id, now)).tree()
        if request.regenerate_message_id:
            plan = tree.plan_regenerate(request.regenerate_message_id)
        elif request.edit_message_id:
            plan = tree.plan_edit(request.edit_message_id)
        else:
            plan = tree.plan_continue()
    await connection.execute(
        "UPDATE conversations SET active_message_id = %s, branched = branched OR %s"
        " WHERE conversation_id = %s",
        (request.assistant_message_id, plan.branched, conversation_id),
    )
    return plan, tree


async def _linear_continuation(
    connection: Connection, request: TurnRequest, conversation_id: str, now: datetime
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
    connection: Connection,
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
    branch = None
    if tree is not None and plan.branched:  # with the texts of its stored messages
        branch = tuple(
            BranchMessage(e.message_id, e.role, texts.get(e.message_id) if e.stored else None)
            for e in entries
        )
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
    connection: Connection,
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


async def _texts(connection: Connection, owner: Owner, ids: Sequence[str]) -> dict[str, str]:
    if not ids:
        return {}
    cursor = await connection.execute(
        "SELECT message_id, text FROM messages WHERE message_id = ANY(%s::text[])"
        " AND tenant_id = %s AND user_id = %s",
        (list(ids), owner.tenant_id, owner.user_id),
    )
    return {message_id: text for message_id, text in await cursor.fetchall()}
