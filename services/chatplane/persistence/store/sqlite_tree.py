"""The SQLite queries under the conversation tree (docs/conversation-tree.md): a conversation's
skeleton, where a regenerate or edit lands, and what BeginTurn records and returns for it.
Called on the store's thread, inside its transactions."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from chatplane.common import errors
from chatplane.persistence.store.base import (
    Conversation,
    Owner,
    Role,
    TurnRequest,
    TurnReservation,
    from_micros,
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

_CONVERSATION_COLUMNS = (
    "conversation_id, tenant_id, user_id, title, create_time_us, update_time_us, message_count"
)


def skeleton(
    connection: sqlite3.Connection, owner: Owner, conversation_id: str, now_us: int
) -> TreeSkeleton:
    """The owner's conversation's skeleton; NotFound when it is not the owner's."""
    row = connection.execute(
        f"SELECT {_CONVERSATION_COLUMNS}, active_message_id, branched FROM conversations"
        " WHERE conversation_id = ? AND tenant_id = ? AND user_id = ?",
        (conversation_id, owner.tenant_id, owner.user_id),
    ).fetchone()
    if row is None:
        raise errors.NotFound("conversation not found")
    conversation: Conversation = conversation_from_row(row[:7], from_micros)
    nodes = tuple(
        TreeNode(message_id, Role(role), parent, reply_to)
        for message_id, role, parent, reply_to in connection.execute(
            "SELECT message_id, role, parent_message_id, reply_to_message_id FROM messages"
            " WHERE conversation_id = ? AND tenant_id = ? ORDER BY create_time_us, position",
            (conversation_id, owner.tenant_id),
        )
    )
    turns = tuple(
        TurnNode(user_message_id, assistant_message_id, parent, bool(regenerate), bool(live))
        for user_message_id, assistant_message_id, parent, regenerate, live in connection.execute(
            "SELECT coalesce(t.reply_to_message_id, t.user_message_id), t.assistant_message_id,"
            " t.parent_message_id, t.reply_to_message_id IS NOT NULL,"
            " t.lease_expire_time_us > ? FROM turns t"
            " WHERE t.conversation_id = ? AND t.tenant_id = ? AND t.user_id = ?"
            " AND NOT EXISTS (SELECT 1 FROM messages m"
            "  WHERE m.message_id = t.assistant_message_id)",
            (now_us, conversation_id, owner.tenant_id, owner.user_id),
        )
    )
    return TreeSkeleton(conversation, row[7], nodes, turns, bool(row[8]))


def target_conversation(connection: sqlite3.Connection, request: TurnRequest, now_us: int) -> str:
    """For a regenerate or edit, the conversation of the message it names ("" otherwise)."""
    target, _ = target_of(request)
    if not target:
        return ""
    owner = request.owner
    row = connection.execute(
        "SELECT conversation_id, tenant_id, user_id FROM messages WHERE message_id = ?",
        (target,),
    ).fetchone()
    live = False
    if row is None:
        live = (
            connection.execute(
                "SELECT 1 FROM turns WHERE user_message_id = ? AND tenant_id = ?"
                " AND user_id = ? AND reply_to_message_id IS NULL"
                " AND lease_expire_time_us > ?",
                (target, owner.tenant_id, owner.user_id, now_us),
            ).fetchone()
            is not None
        )
    found = None if row is None else (row[0], Owner(row[1], row[2]))
    return require_target(target, found, owner, request.conversation_id, live)


def place_turn(
    connection: sqlite3.Connection, request: TurnRequest, conversation_id: str, now_us: int
) -> tuple[TurnPlan, ConversationTree | None]:
    """Where a new turn of the conversation goes; makes its answer the active leaf. A turn
    continuing a linear conversation after a stored or running answer needs no tree."""
    tree: ConversationTree | None = None
    plan = _linear_continuation(connection, request, conversation_id, now_us)
    if plan is None:
        tree = skeleton(connection, request.owner, conversation_id, now_us).tree()
        plan = plan_turn(tree, request)
    connection.execute(
        "UPDATE conversations SET active_message_id = ?, branched = max(branched, ?)"
        " WHERE conversation_id = ?",
        (request.assistant_message_id, int(plan.branched), conversation_id),
    )
    return plan, tree


def _linear_continuation(
    connection: sqlite3.Connection, request: TurnRequest, conversation_id: str, now_us: int
) -> TurnPlan | None:
    """The plan of a turn continuing an unbranched conversation whose active leaf is stored
    or still being answered (the common case), from two point reads; None otherwise."""
    if request.regenerate_message_id or request.edit_message_id:
        return None
    row = connection.execute(
        "SELECT c.active_message_id, c.branched,"
        " EXISTS (SELECT 1 FROM messages m WHERE m.message_id = c.active_message_id),"
        " EXISTS (SELECT 1 FROM turns t WHERE t.assistant_message_id = c.active_message_id"
        "  AND t.lease_expire_time_us > ?)"
        " FROM conversations c WHERE c.conversation_id = ?",
        (now_us, conversation_id),
    ).fetchone()
    if row is None or row[0] is None or row[1] or not (row[2] or row[3]):
        return None
    return TurnPlan(row[0], "", branched=False)


def details(
    connection: sqlite3.Connection,
    request: TurnRequest,
    reservation: TurnReservation,
    plan: TurnPlan,
    tree: ConversationTree | None,
) -> TurnReservation:
    """An acquired reservation with what the Gateway and the Agent need of the tree: the
    parent, a regenerated answer's question, and (in a conversation with branches) the
    branch the answer follows."""
    texts = _texts(
        connection,
        request.owner,
        [plan.reply_to_message_id] if plan.reply_to_message_id else [],
    )
    branch = None
    if tree is not None and plan.branched:
        entries = tree.branch(plan, request.branch_limit)
        stored = _texts(connection, request.owner, [e.message_id for e in entries if e.stored])
        branch = branch_messages(entries, stored)
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


def taken_over(
    connection: sqlite3.Connection,
    request: TurnRequest,
    reservation: TurnReservation,
    now_us: int,
) -> TurnReservation:
    """A reservation taken over after its lease ran out, with the tree as it was reserved."""
    row = connection.execute(
        "SELECT t.parent_message_id, t.reply_to_message_id, c.branched FROM turns t"
        " JOIN conversations c ON c.conversation_id = t.conversation_id"
        " WHERE t.assistant_message_id = ?",
        (reservation.assistant_message_id,),
    ).fetchone()
    if row is None:
        return reservation
    parent, reply_to, branched = row
    plan = TurnPlan(parent or "", reply_to or "", branched=bool(branched))
    found = skeleton(connection, request.owner, reservation.conversation_id, now_us)
    return details(connection, request, reservation, plan, found.tree())


def _texts(connection: sqlite3.Connection, owner: Owner, ids: Sequence[str]) -> dict[str, str]:
    if not ids:
        return {}
    placeholders = ", ".join("?" * len(ids))
    return dict(
        connection.execute(
            f"SELECT message_id, text FROM messages WHERE message_id IN ({placeholders})"
            " AND tenant_id = ? AND user_id = ?",
            (*ids, owner.tenant_id, owner.user_id),
        ).fetchall()
    )
