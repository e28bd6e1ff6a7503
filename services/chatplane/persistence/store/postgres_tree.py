"""The PostgreSQL queries under the conversation tree (docs/conversation-tree.md): a
conversation's skeleton, where a regenerate or edit lands, and what BeginTurn records and
returns for it. Run on the caller's connection, inside its transaction where it has one."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg

from chatplane.common import errors
from chatplane.persistence.store.base import (
    Conversation,
    Owner,
    Role,
    TurnRequest,
    TurnReservation,
)
from chatplane.persistence.store.records import conversation_from_row
from chatplane.persistence.store.tree import ConversationTree, TreeNode, TurnNode, TurnPlan
from chatplane.persistence.store.tree_store import (
    TreeSkeleton,
    branch_messages,
    plan_turn,
    require_target,
    target_of,
)

_Connection = psycopg.AsyncConnection[tuple[Any, ...]]

_CONVERSATION_COLUMNS = (
    "conversation_id, tenant_id, user_id, title, create_time, update_time, message_count"
)


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


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
    conversation: Conversation = conversation_from_row(row[:7], _utc)
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
