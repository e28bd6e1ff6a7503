"""The system of record: `ConversationStore` on PostgreSQL (psycopg 3, async, with a
connection pool). Versioned SQL migrations are applied at start under an advisory lock; each
batch from the message log is one transaction: its ids are looked up under its conversations'
locks and the new messages are COPYed straight into `messages` (store/message_copy.py,
docs/postgres.md)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Self

import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from chatplane.common import errors
from chatplane.common.closing import AsyncClosable
from chatplane.common.ids import is_valid_id, new_id
from chatplane.common.timestamps import utc_now
from chatplane.persistence.store import answer_deltas, tree_store
from chatplane.persistence.store.answer_metrics import (
    ANSWER_METRICS_COLUMNS,
    AnswerAnalytics,
    answer_metric_rows,
)
from chatplane.persistence.store.base import (
    Answer,
    Clock,
    ConversationCursor,
    ConversationHistory,
    ConversationPage,
    Feedback,
    Message,
    MessageCursor,
    MessageFacts,
    Owner,
    Rating,
    Role,
    Turn,
    TurnRequest,
    TurnReservation,
    require_history_request,
    require_known_id,
    require_limit,
)
from chatplane.persistence.store.data_keys import DataKeys
from chatplane.persistence.store.database import (
    LOCK_CLASS_MIGRATION,
    LOCK_CONVERSATIONS,
    UNAVAILABLE_ERRORS,
    Connection,
    Database,
    conversation_locks,
    found,
)
from chatplane.persistence.store.erasure import Erasures, Retention
from chatplane.persistence.store.handoff import Handoffs
from chatplane.persistence.store.key_records import ApiKeys, AuditChain
from chatplane.persistence.store.message_copy import LostRace as _LostRace
from chatplane.persistence.store.message_copy import copy_messages, record_conversations
from chatplane.persistence.store.migrations import shipped_migrations
from chatplane.persistence.store.quota import TokenQuotas
from chatplane.persistence.store.records import (
    CONVERSATION_COLUMNS,
    MESSAGE_COLUMNS,
    admit_batch,
    conversation_from_row,
    message_from_row,
    utc,
)
from chatplane.persistence.store.tree_store import ConversationTrees
from chatplane.persistence.store.variant_registry import VariantRegistry

_log = logging.getLogger(__name__)

# How long a starting replica waits for another one's migration before it gives up.
_MIGRATION_LOCK_TIMEOUT = "120s"
# A transaction that lost a race (see _LostRace) is run again this many times in all.
_RACE_ATTEMPTS = 3


async def migrate(dsn: str, *, connect_timeout: float = 10.0) -> int:
    """Bring the database at `dsn` (its first schema on the search_path) to the newest schema
    version; returns that version.

    All pending migrations run in one transaction (PostgreSQL's DDL is transactional, so a
    crash mid-way leaves the previous version intact) under a transaction-level advisory lock,
    so replicas starting at once apply each migration exactly once: the others wait, then find
    nothing left to do.
    """
    migrations = shipped_migrations()
    connection = await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, connect_timeout=max(1, round(connect_timeout))
    )
    async with connection, connection.transaction():
        await connection.execute(f"SET LOCAL lock_timeout = '{_MIGRATION_LOCK_TIMEOUT}'")
        await connection.execute("SELECT pg_advisory_xact_lock(%s, 0)", (LOCK_CLASS_MIGRATION,))
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " apply_time timestamptz NOT NULL DEFAULT now())"
        )
        cursor = await connection.execute("SELECT coalesce(max(version), 0) FROM schema_version")
        row = await cursor.fetchone()
        current = 0 if row is None else int(row[0])
        if current > len(migrations):
            raise RuntimeError(
                f"the database is at schema version {current}; this code knows {len(migrations)}"
            )
        for migration in migrations[current:]:
            # A script without parameters may hold several statements.
            await connection.execute(migration.script)
            await connection.execute(
                "INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
            _log.info("schema migrated", extra={"version": migration.version})
    return len(migrations)


class PostgresConversationStore(AsyncClosable):
    """The store in a PostgreSQL database. Use `await PostgresConversationStore.open(dsn, ...)`,
    which migrates the schema and opens the connection pool before the first call.

    Concurrency: any number of stores (replicas) may use one database. Writers of the same
    conversation are serialised by a transaction-level advisory lock on its id (so a batch's
    checks and its writes see one state); idempotency keys and message ids are arbitrated by
    unique indexes (INSERT ... ON CONFLICT, or a unique violation of the direct COPY), and a
    transaction that loses such a race runs again. Reads are single statements, so each sees
    one snapshot.

    Conversations, their messages and turns are its own methods; every other area is a part
    on the same pool, with its SQL in its own module.
    """

    trees: ConversationTrees
    handoffs: Handoffs
    quota: TokenQuotas
    api_keys: ApiKeys
    audit: AuditChain
    erasures: Erasures
    retention: Retention
    data_keys: DataKeys
    registry: VariantRegistry
    analytics: AnswerAnalytics

    def __init__(
        self,
        pool: AsyncConnectionPool[Connection],
        *,
        clock: Clock = utc_now,
    ) -> None:
        self._db = db = Database(pool, clock)
        self.trees = ConversationTrees(db, self.get_conversation)
        self.handoffs = Handoffs(db)
        self.quota = TokenQuotas(db)
        self.api_keys = ApiKeys(db)
        self.audit = AuditChain(db)
        self.erasures = Erasures(db)
        self.retention = Retention(db)
        self.data_keys = DataKeys(db)
        self.registry = VariantRegistry(db)
        self.analytics = AnswerAnalytics(db)

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        pool_max_size: int = 10,
        clock: Clock = utc_now,
        connect_timeout: float = 10.0,
        acquire_timeout: float = 10.0,
        statement_timeout: float = 30.0,
    ) -> Self:
        """A store on the database at `dsn`, its schema migrated to the newest version.

        `pool_max_size` bounds the connections this store holds; `acquire_timeout` is how long
        a call waits for a free one, `statement_timeout` how long one statement may run (both
        then fail with Unavailable). Raises Unavailable when the database cannot be reached
        within `connect_timeout` seconds.
        """
        if not dsn:
            raise ValueError("a PostgreSQL DSN is required")
        if pool_max_size < 1:
            raise ValueError(f"pool_max_size must be at least 1, not {pool_max_size}")
        try:
            await migrate(dsn, connect_timeout=connect_timeout)
        except UNAVAILABLE_ERRORS as error:
            raise errors.Unavailable("the conversation store is unavailable") from error
        kwargs: dict[str, Any] = {"autocommit": True}
        if "application_name" not in conninfo_to_dict(dsn):
            kwargs["application_name"] = "chatplane-persistence"
        session_settings = (
            f"SET statement_timeout = {round(statement_timeout * 1000)};"
            # A client that dies inside a transaction must not hold its locks for long.
            f" SET idle_in_transaction_session_timeout = {round(statement_timeout * 2000)}"
        )

        async def configure(connection: Connection) -> None:
            await connection.execute(session_settings)

        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            dsn,
            kwargs=kwargs,
            min_size=min(2, pool_max_size),
            max_size=pool_max_size,
            open=False,
            configure=configure,
            # One empty round trip per checkout: a connection broken by a server restart is
            # replaced before use instead of failing the caller's call.
            check=AsyncConnectionPool.check_connection,
            timeout=acquire_timeout,
            name="chatplane-store",
        )
        try:
            await pool.open(wait=True, timeout=connect_timeout)
        except UNAVAILABLE_ERRORS as error:
            await pool.close()
            raise errors.Unavailable("the conversation store is unavailable") from error
        return cls(pool, clock=clock)

    async def begin_turn(self, request: TurnRequest) -> TurnReservation:
        """Reserve the ids of a turn, creating the conversation when none is named.

        With a `client_message_id`, at most one turn exists per (owner, key) and exactly one
        of any number of concurrent callers acquires it; later calls get the same ids, not
        acquired, until the lease expires without the assistant message stored, when the next
        call acquires it again. Raises NotFound for a conversation not of the owner, and
        AlreadyExists when the user message id is already reserved by another turn.
        """
        if request.conversation_id and not is_valid_id(request.conversation_id):
            raise errors.NotFound("conversation not found")
        now = self._db.clock()
        async with self._db.connection() as connection:
            for _ in range(_RACE_ATTEMPTS):
                with contextlib.suppress(_LostRace):
                    async with connection.transaction():
                        return await self._begin_turn(connection, request, now)
        raise errors.Unavailable("the turn is contended; try again")

    async def _begin_turn(
        self, connection: Connection, request: TurnRequest, now: datetime
    ) -> TurnReservation:
        owner = request.owner
        if request.client_message_id:
            cursor = await connection.execute(
                "SELECT t.conversation_id, coalesce(t.reply_to_message_id, t.user_message_id),"
                " t.assistant_message_id, t.lease_expire_time, EXISTS (SELECT 1 FROM messages m"
                "  WHERE m.message_id = t.assistant_message_id"
                "  AND m.tenant_id = t.tenant_id AND m.user_id = t.user_id)"
                " FROM turns t WHERE t.tenant_id = %s AND t.user_id = %s"
                " AND t.client_message_id = %s FOR UPDATE OF t",
                (owner.tenant_id, owner.user_id, request.client_message_id),
            )
            row = await cursor.fetchone()
            if row is not None:  # the key is reserved already; its turn row is now locked
                conversation_id, user_message_id, assistant_message_id, expire, complete = row
                reclaimed = TurnReservation(
                    conversation_id,
                    user_message_id,
                    assistant_message_id,
                    acquired=not complete and utc(expire) <= now,
                    complete=bool(complete),
                    lease_expire_time=utc(expire),
                )
                if not reclaimed.acquired:
                    return reclaimed
                # The previous owner's lease ran out before its answer was stored: this caller
                # takes the turn over with the same ids, so whichever answer is stored first wins.
                expire = now + request.lease
                await connection.execute(
                    "UPDATE turns SET lease_expire_time = %s WHERE user_message_id = %s",
                    (expire, user_message_id),
                )
                reclaimed = dataclasses.replace(reclaimed, lease_expire_time=expire)
                return await tree_store.taken_over(connection, request, reclaimed, now)
        conversation_id = (
            await tree_store.target_conversation(connection, request, now)
            or request.conversation_id
        )
        if conversation_id:
            # NO KEY UPDATE: a concurrent delete of the conversation waits for this turn (and
            # then removes it too) instead of leaving it pointing at nothing, and turns of one
            # conversation are placed in its tree one at a time.
            cursor = await connection.execute(
                "SELECT tenant_id, user_id FROM conversations WHERE conversation_id = %s"
                " FOR NO KEY UPDATE",
                (conversation_id,),
            )
            row = await cursor.fetchone()
            if row is None or Owner(row[0], row[1]) != owner:
                raise errors.NotFound("conversation not found")
        else:
            conversation_id = new_id()
            await connection.execute(
                f"INSERT INTO conversations ({CONVERSATION_COLUMNS})"
                " VALUES (%s, %s, %s, %s, %s, %s, 0)",
                (conversation_id, owner.tenant_id, owner.user_id, request.title, now, now),
            )
        expire = now + request.lease
        plan, tree = await tree_store.place_turn(connection, request, conversation_id, now)
        try:
            cursor = await connection.execute(
                "INSERT INTO turns (user_message_id, assistant_message_id, conversation_id,"
                " tenant_id, user_id, client_message_id, lease_expire_time, create_time,"
                " parent_message_id, reply_to_message_id)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (tenant_id, user_id, client_message_id)"
                " WHERE client_message_id IS NOT NULL DO NOTHING",
                (
                    request.user_message_id,
                    request.assistant_message_id,
                    conversation_id,
                    owner.tenant_id,
                    owner.user_id,
                    request.client_message_id or None,
                    expire,
                    now,
                    plan.parent_message_id,
                    plan.reply_to_message_id or None,
                ),
            )
        except psycopg.errors.UniqueViolation as error:
            raise errors.AlreadyExists("the turn's message ids are reserved already") from error
        if cursor.rowcount == 0:
            # Another caller reserved the key since our SELECT: our conversation (if we made
            # one) goes with the rollback, and the next attempt finds the winner's turn.
            raise _LostRace
        reservation = TurnReservation(
            conversation_id,
            request.user_message_id,
            request.assistant_message_id,
            acquired=True,
            complete=False,
            lease_expire_time=expire,
        )
        return await tree_store.details(connection, request, reservation, plan, tree)

    async def get_turn(
        self, owner: Owner, user_message_id: str, *, assistant_message_id: str = ""
    ) -> Turn:
        """The turn reserved under `user_message_id` by the owner, with its stored messages;
        with `assistant_message_id`, the turn of that answer (a user message has one turn per
        regenerated answer)."""
        key = assistant_message_id or user_message_id
        require_known_id(key, "turn")
        by = "assistant_message_id" if assistant_message_id else "user_message_id"
        rows = await self._db.fetchall(
            "SELECT t.conversation_id, t.assistant_message_id, t.lease_expire_time,"
            " coalesce(t.reply_to_message_id, t.user_message_id),"
            f" {_prefixed('m', MESSAGE_COLUMNS)} FROM turns t"
            " LEFT JOIN messages m"
            " ON m.message_id IN (coalesce(t.reply_to_message_id, t.user_message_id),"
            " t.assistant_message_id)"
            " AND m.tenant_id = t.tenant_id AND m.user_id = t.user_id"
            f" WHERE t.{by} = %s AND t.tenant_id = %s AND t.user_id = %s",
            (key, owner.tenant_id, owner.user_id),
        )
        if not rows:
            raise errors.NotFound("turn not found")
        conversation_id, assistant_message_id, expire, user_message_id = rows[0][:4]
        stored = {m.message_id: m for m in (message_from_row(r[4:]) for r in rows if r[4])}
        return Turn(
            conversation_id,
            user_message_id,
            assistant_message_id,
            utc(expire),
            stored.get(user_message_id),
            stored.get(assistant_message_id),
        )

    async def get_answer(self, owner: Owner, assistant_message_id: str) -> Answer:
        """The owner's turn whose assistant message id this is, with the answer's delta ends
        once stored; NotFound for any other id (a user message's, someone else's)."""
        require_known_id(assistant_message_id, "message")
        row = await self._db.fetchone(
            "SELECT t.user_message_id, d.delta_ends FROM turns t"
            " LEFT JOIN answer_deltas d ON d.message_id = t.assistant_message_id"
            " WHERE t.assistant_message_id = %s AND t.tenant_id = %s AND t.user_id = %s",
            (assistant_message_id, owner.tenant_id, owner.user_id),
        )
        user_message_id, delta_ends = found(row, "message")
        # The deltas row is written with the message, so it is read again with the turn.
        # By the answer's id: a regenerated answer's turn is keyed by a fresh id.
        turn = await self.get_turn(
            owner, user_message_id, assistant_message_id=assistant_message_id
        )
        if turn.assistant_message is not None and delta_ends is None:
            row = await self._db.fetchone(
                "SELECT delta_ends FROM answer_deltas WHERE message_id = %s",
                (assistant_message_id,),
            )
            delta_ends = row[0] if row else None
        return Answer(turn, answer_deltas.decode(delta_ends))

    async def release_turn(
        self, owner: Owner, user_message_id: str, *, assistant_message_id: str = ""
    ) -> bool:
        """Ends the lease of the owner's turn (found as by `get_turn`) unless its assistant
        message is stored (then False): the next BeginTurn with its key acquires it at once."""
        key = assistant_message_id or user_message_id
        require_known_id(key, "turn")
        by = "assistant_message_id" if assistant_message_id else "user_message_id"
        now = self._db.clock()
        async with self._db.connection() as connection, connection.transaction():
            cursor = await connection.execute(
                "SELECT EXISTS (SELECT 1 FROM messages m"
                "  WHERE m.message_id = t.assistant_message_id), t.user_message_id"
                f" FROM turns t WHERE t.{by} = %s AND t.tenant_id = %s"
                " AND t.user_id = %s FOR UPDATE OF t",
                (key, owner.tenant_id, owner.user_id),
            )
            row = found(await cursor.fetchone(), "turn")
            if row[0]:
                return False
            await connection.execute(
                "UPDATE turns SET lease_expire_time = %s WHERE user_message_id = %s",
                (now, row[1]),
            )
        return True

    async def list_conversations(
        self, owner: Owner, *, limit: int, after: ConversationCursor | None = None
    ) -> ConversationPage:
        """Up to `limit` of the owner's conversations, most recently updated first, starting
        after `after`. Keyset paging: conversations created or updated while paging move to
        the front, so they never shift or repeat the rest of the pages."""
        require_limit(limit)
        query = (
            f"SELECT {CONVERSATION_COLUMNS} FROM conversations"
            " WHERE tenant_id = %s AND user_id = %s"
        )
        parameters: list[Any] = [owner.tenant_id, owner.user_id]
        if after is not None:
            query += " AND (update_time, conversation_id) < (%s, %s)"
            parameters += [after.update_time, after.conversation_id]
        query += " ORDER BY update_time DESC, conversation_id DESC LIMIT %s"
        rows = await self._db.fetchall(query, [*parameters, limit + 1])
        conversations = tuple(conversation_from_row(row) for row in rows[:limit])
        next_cursor = None
        if len(rows) > limit:
            last = conversations[-1]
            next_cursor = ConversationCursor(last.update_time, last.conversation_id)
        return ConversationPage(conversations, next_cursor)

    async def get_conversation(
        self,
        owner: Owner,
        conversation_id: str,
        *,
        limit: int,
        after: MessageCursor | None = None,
    ) -> ConversationHistory:
        """The conversation and up to `limit` of its messages, oldest first, after `after`
        (which must be a cursor of this conversation)."""
        require_history_request(conversation_id, limit, after)
        # One statement, so the conversation and its messages come from one snapshot.
        page_filter = ""
        parameters: list[Any] = []
        if after is not None:
            page_filter = " AND (m.create_time, m.position) > (%s, %s)"
            parameters += [after.create_time, after.position]
        query = (
            f"SELECT {_prefixed('c', CONVERSATION_COLUMNS)},"
            f" {_prefixed('p', MESSAGE_COLUMNS)}, p.position"
            " FROM conversations c LEFT JOIN LATERAL ("
            f"  SELECT {_prefixed('m', MESSAGE_COLUMNS)}, m.position FROM messages m"
            f"  WHERE m.conversation_id = c.conversation_id AND m.tenant_id = c.tenant_id"
            f"{page_filter} ORDER BY m.create_time, m.position LIMIT %s"
            " ) p ON true"
            " WHERE c.conversation_id = %s AND c.tenant_id = %s AND c.user_id = %s"
            " ORDER BY p.create_time, p.position"
        )
        parameters += [limit + 1, conversation_id, owner.tenant_id, owner.user_id]
        rows = await self._db.fetchall(query, parameters)
        if not rows:
            raise errors.NotFound("conversation not found")
        columns = len(CONVERSATION_COLUMNS.split(","))
        conversation = conversation_from_row(rows[0][:columns])
        found = [row[columns:] for row in rows if row[columns] is not None]
        messages = tuple(message_from_row(row) for row in found[:limit])
        next_cursor = None
        if len(found) > limit:
            next_cursor = MessageCursor(
                conversation_id, messages[-1].create_time, found[limit - 1][-1]
            )
        return ConversationHistory(conversation, messages, next_cursor)

    async def delete_conversation(self, owner: Owner, conversation_id: str) -> datetime:
        """Delete the conversation with its messages, turns and feedback; returns when.
        Messages recorded for it later are dropped by `write_messages`, so it never returns."""
        require_known_id(conversation_id, "conversation")
        now = self._db.clock()
        async with self._db.connection() as connection, connection.transaction():
            # The lock batch writers take: a batch checks the tombstone and writes under it.
            await _lock_conversations(connection, [conversation_id])
            # Messages, their feedback and the turns go with it (ON DELETE CASCADE).
            cursor = await connection.execute(
                "WITH deleted AS (DELETE FROM conversations"
                "  WHERE conversation_id = %s AND tenant_id = %s AND user_id = %s"
                "  RETURNING conversation_id, tenant_id, user_id)"
                " INSERT INTO deleted_conversations"
                " (conversation_id, tenant_id, user_id, delete_time)"
                " SELECT conversation_id, tenant_id, user_id, %s FROM deleted",
                (conversation_id, owner.tenant_id, owner.user_id, now),
            )
            if cursor.rowcount == 0:
                raise errors.NotFound("conversation not found")
        return now

    async def submit_feedback(self, owner: Owner, feedback: Feedback) -> datetime:
        """Store (or replace) the owner's feedback on one of the owner's assistant messages;
        returns when it was stored. Any other message is NotFound."""
        require_known_id(feedback.message_id, "assistant message")
        now = self._db.clock()
        async with self._db.connection() as connection:
            try:
                cursor = await connection.execute(
                    "INSERT INTO feedback"
                    " (message_id, tenant_id, user_id, rating, comment, create_time, score)"
                    " SELECT message_id, tenant_id, user_id, %s, %s, %s, %s FROM messages"
                    " WHERE message_id = %s AND tenant_id = %s AND user_id = %s"
                    " AND role = %s"
                    " ON CONFLICT (message_id, tenant_id, user_id) DO UPDATE SET"
                    " rating = excluded.rating, comment = excluded.comment,"
                    " create_time = excluded.create_time, score = excluded.score",
                    (
                        feedback.rating.value,
                        feedback.comment,
                        now,
                        feedback.score,
                        feedback.message_id,
                        owner.tenant_id,
                        owner.user_id,
                        Role.ASSISTANT.value,
                    ),
                )
            except psycopg.errors.ForeignKeyViolation as error:
                # The conversation was deleted between the SELECT and the insert.
                raise errors.NotFound("assistant message not found") from error
        if cursor.rowcount == 0:
            raise errors.NotFound("assistant message not found")
        return now

    async def iter_messages(self, after: str | None, limit: int) -> list[Message]:
        """Up to `limit` stored messages of every owner, in message id order, starting after
        the message id `after` (None: from the first); the owner is in each message.

        A keyset scan of the whole system of record for rebuilding what is derived from it
        (the memory index): call again with the last message's id until a page comes back
        short. Not scoped to an owner, so never for answering a caller. Messages stored while
        scanning are included when their id sorts after the cursor; a rebuild that must not
        miss any runs alongside the live path that also indexes new turns.
        """
        require_limit(limit)
        query = f"SELECT {MESSAGE_COLUMNS} FROM messages"
        parameters: list[Any] = []
        if after is not None:
            query += " WHERE message_id > %s"
            parameters.append(after)
        query += " ORDER BY message_id LIMIT %s"
        rows = await self._db.fetchall(query, [*parameters, limit])
        return [message_from_row(row) for row in rows]

    async def write_messages(self, messages: Sequence[Message]) -> int:
        """Store a batch from the message log in ONE transaction; returns how many were new.

        Idempotent by message id: a message stored already (or twice in the batch) is not
        stored again. Messages of a deleted conversation are dropped. A conversation not yet
        known is created for the message's owner. When any message belongs to a conversation
        or message id of another owner, nothing is written and MessagesRejected says which.
        """
        if not messages:
            return 0
        batch = tuple(messages)
        async with self._db.connection() as connection:
            for _ in range(_RACE_ATTEMPTS):
                with contextlib.suppress(_LostRace):
                    async with connection.transaction():
                        return await self._write_batch(connection, batch)
        raise errors.Unavailable("the batch is contended; try again")

    async def _write_batch(self, connection: Connection, batch: tuple[Message, ...]) -> int:
        """One batch in the caller's transaction: the batch's ids are looked up in the
        locking round trip (so the decision, records.admit_batch, is right first time), the
        conversations are created and counted for what will be inserted, then the messages are
        COPYed straight into `messages`. Under the locks no writer of these conversations can
        interfere; an id stored meanwhile for another conversation makes the COPY fail on the
        primary key, which raises _LostRace (run again, which then refuses it)."""
        now = self._db.clock()
        owners, deleted, placed = await _lock_conversations(
            connection,
            {m.conversation_id for m in batch},
            message_ids={m.message_id for m in batch},
        )
        accepted, created = admit_batch(batch, dict(owners), deleted, placed)
        if not accepted:
            return 0
        await record_conversations(connection, accepted, created)
        await copy_messages(connection, accepted, now)
        await _write_answer_extras(connection, accepted)
        return len(accepted)

    async def user_message_facts(
        self, owner: Owner, *, limit: int, after: str | None = None
    ) -> list[MessageFacts]:
        """Up to `limit` of the owner's messages that have answer facts or the owner's
        feedback, in message id order after the message id `after` (None: from the first),
        with those facts (never the text). Keyset paging over the owner's messages only."""
        require_limit(limit)
        rows = await self._db.fetchall(
            "SELECT m.message_id, m.conversation_id, a.variant, a.first_token_ms,"
            " a.duration_ms, f.rating, f.score, f.comment, f.create_time FROM messages m"
            " LEFT JOIN answer_metrics a ON a.message_id = m.message_id"
            " LEFT JOIN feedback f ON f.message_id = m.message_id"
            " AND f.tenant_id = m.tenant_id AND f.user_id = m.user_id"
            " WHERE m.tenant_id = %s AND m.user_id = %s"
            + (" AND m.message_id > %s" if after else "")
            + " AND (a.message_id IS NOT NULL OR f.message_id IS NOT NULL)"
            " ORDER BY m.message_id LIMIT %s",
            [owner.tenant_id, owner.user_id, *([after] if after else []), limit],
        )
        facts = []
        for message_id, conversation, variant, first_token, duration, rating, *feedback in rows:
            score, comment, feedback_time = feedback
            facts.append(
                MessageFacts(
                    message_id,
                    conversation,
                    variant or "",
                    first_token,
                    duration,
                    None
                    if rating is None
                    else Feedback(message_id, Rating(rating), comment or "", score),
                    None if feedback_time is None else utc(feedback_time),
                )
            )
        return facts

    async def close(self) -> None:
        """Finish work under way and release the store's resources."""
        await self._db.close()


async def _lock_conversations(
    connection: Connection,
    conversation_ids: Iterable[str],
    *,
    message_ids: Iterable[str] = (),
) -> tuple[dict[str, Owner], set[str], dict[str, tuple[str, Owner]]]:
    """Take the transaction-level advisory locks of these conversations, then read their
    stored owners and which of them are deleted (tombstones); with `message_ids`, also look up
    where those ids are stored: their conversation and owner. One round trip (a pipeline).

    Whoever else writes these conversations (another replica after a rebalance, a delete)
    waits until this transaction ends, so what is read here stays true until then.
    """
    conversation_ids = list(conversation_ids)
    async with connection.pipeline():
        await connection.execute(LOCK_CONVERSATIONS, conversation_locks(conversation_ids))
        # A statement after the locks: READ COMMITTED reads with a snapshot taken once they
        # are held, so every write that held them before is seen.
        cursor = await connection.execute(
            "SELECT false, conversation_id, tenant_id, user_id FROM conversations"
            " WHERE conversation_id = ANY(%(ids)b::text[])"
            " UNION ALL"
            " SELECT true, conversation_id, tenant_id, user_id FROM deleted_conversations"
            " WHERE conversation_id = ANY(%(ids)b::text[])",
            {"ids": conversation_ids},
        )
        rows = await cursor.fetchall()
        message_ids = list(message_ids)
        placed_rows: list[tuple[Any, ...]] = []
        if message_ids:
            placed_cursor = await connection.execute(
                "SELECT message_id, conversation_id, tenant_id, user_id FROM messages"
                " WHERE message_id = ANY(%b::text[])",
                (message_ids,),
            )
            placed_rows = await placed_cursor.fetchall()
    owners: dict[str, Owner] = {}
    deleted: set[str] = set()
    for tombstone, conversation_id, tenant_id, user_id in rows:
        if tombstone:
            deleted.add(conversation_id)
        else:
            owners[conversation_id] = Owner(tenant_id, user_id)
    placed = {
        message_id: (conversation_id, Owner(tenant_id, user_id))
        for message_id, conversation_id, tenant_id, user_id in placed_rows
    }
    return owners, deleted, placed


async def _write_answer_extras(connection: Connection, inserted: Sequence[Message]) -> None:
    """What is stored beside the answers just inserted: where their deltas ended (ResumeChat)
    and their A/B measures (the variant report, docs/variants.md)."""
    deltas = answer_deltas.delta_rows(inserted)
    if deltas:
        async with connection.cursor() as cursor:
            await cursor.executemany(answer_deltas.INSERT_POSTGRES, deltas)
    rows = answer_metric_rows(inserted)
    if rows:
        await connection.execute(
            f"INSERT INTO answer_metrics ({ANSWER_METRICS_COLUMNS}, create_time)"
            " SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::int4[],"
            " %b::int4[], %b::int8[], %b::int8[], %b::timestamptz[])",
            [list(column) for column in zip(*rows, strict=True)],
        )


def _prefixed(alias: str, columns: str) -> str:
    """`a, b` as `alias.a, alias.b`."""
    return ", ".join(f"{alias}.{column.strip()}" for column in columns.split(","))
