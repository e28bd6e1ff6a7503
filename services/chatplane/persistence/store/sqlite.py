"""The embedded system of record: `ConversationStore` on one SQLite file (WAL, fsync on every
commit), with versioned migrations, run on a dedicated thread off the event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Self, TypeVar

from chatplane.audit.chain import AuditEvent, AuditHead, AuditRecord
from chatplane.common import errors
from chatplane.common.ids import is_valid_id, new_id
from chatplane.crypto.keyring import WrappedDataKey
from chatplane.persistence.store import (
    answer_deltas,
    sqlite_erasure,
    sqlite_handoff,
    sqlite_quota,
    sqlite_tree,
)
from chatplane.persistence.store import sqlite_data_keys as data_keys
from chatplane.persistence.store import sqlite_identity as identity
from chatplane.persistence.store.answer_metrics import (
    ANSWER_METRICS_COLUMNS,
    VariantStats,
    answer_metric_rows,
    report_query,
    stats_from_row,
)
from chatplane.persistence.store.base import (
    Answer,
    ApiKey,
    Clock,
    Conversation,
    ConversationCursor,
    ConversationHistory,
    ConversationPage,
    ConversationStore,
    Feedback,
    IssuedApiKey,
    Message,
    MessageCursor,
    Owner,
    Role,
    Turn,
    TurnRequest,
    TurnReservation,
    derived_title,
    from_micros,
    issue_api_key,
    require_history_request,
    require_limit,
    to_micros,
    utc_now,
)
from chatplane.persistence.store.erasure import (
    ErasureJob,
    ExpiredConversation,
    RetentionPolicy,
    require_retention_days,
)
from chatplane.persistence.store.handoff import (
    HandoffChange,
    HandoffCursor,
    HandoffPage,
    HandoffState,
)
from chatplane.persistence.store.key_records import (
    ApiKeyCursor,
    ApiKeyPage,
    AuditActor,
    RotatedApiKey,
)
from chatplane.persistence.store.migrations import Migration, shipped_migrations
from chatplane.persistence.store.quota import QuotaReservation, TokenQuota
from chatplane.persistence.store.rated_answers import (
    RatedAnswerQuery,
    RatedAnswerRow,
    rated_answers_sql,
)
from chatplane.persistence.store.rated_answers import row_of as rated_answer_row
from chatplane.persistence.store.records import (
    admit_batch,
    conversation_from_row,
    message_from_row,
    message_row,
)
from chatplane.persistence.store.sqlite_registry import SqliteVariantRegistry
from chatplane.persistence.store.sqlite_transactions import (
    in_write_transaction as _in_write_transaction,
)
from chatplane.persistence.store.sqlite_transactions import (
    read_transaction as _read_transaction,
)
from chatplane.persistence.store.sqlite_transactions import (
    write_transaction as _write_transaction,
)
from chatplane.persistence.store.tree_store import TreeQueries, TreeSkeleton
from chatplane.persistence.store.user_export import (
    MessageFacts,
    facts_from_row,
    facts_parameters,
    facts_query,
)

_log = logging.getLogger(__name__)

_T = TypeVar("_T")

# Stay well under SQLite's limit on bound parameters in one statement.
_IN_CHUNK = 500

_MESSAGE_COLUMNS = (
    "message_id, conversation_id, tenant_id, user_id, role, text, status, model,"
    " create_time_us, reply_to_message_id, finish_reason, input_tokens, output_tokens,"
    " client_message_id, parent_message_id, operator_id"
)
# One placeholder per column of _MESSAGE_COLUMNS.
_MESSAGE_PLACEHOLDERS = ", ".join("?" * (_MESSAGE_COLUMNS.count(",") + 1))
_CONVERSATION_COLUMNS = (
    "conversation_id, tenant_id, user_id, title, create_time_us, update_time_us, message_count"
)


def sqlite_migrations() -> list[Migration]:
    """The migrations shipped in chatplane/persistence/migrations/sqlite, in order."""
    return shipped_migrations("sqlite")


class SqliteConversationStore(SqliteVariantRegistry, TreeQueries, ConversationStore):
    """The store in the SQLite file at `path`. Use `await SqliteConversationStore.open(path)`,
    which creates or migrates the schema before the first call.

    Every call runs on the store's one thread with its one connection (sqlite3 connections
    are not shareable across threads, and one writer is all SQLite allows anyway). Writes take
    the write lock up front (BEGIN IMMEDIATE), so several stores or processes on one file stay
    correct: each read-check-write runs alone.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Clock = utc_now, busy_timeout: float = 10.0
    ) -> None:
        self._path = Path(path)
        self._clock = clock
        self._busy_timeout = busy_timeout
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="chatplane-store"
        )
        self._connection: sqlite3.Connection | None = None
        self._closed = False

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], *, clock: Clock = utc_now, busy_timeout: float = 10.0
    ) -> Self:
        """A store on `path` with its schema migrated to the newest version."""
        store = cls(path, clock=clock, busy_timeout=busy_timeout)
        try:
            await store._run(lambda connection: None)
        except BaseException:
            await store.close()
            raise
        return store

    @property
    def path(self) -> Path:
        """The SQLite file."""
        return self._path

    async def begin_turn(self, request: TurnRequest) -> TurnReservation:
        if request.conversation_id and not is_valid_id(request.conversation_id):
            raise errors.NotFound("conversation not found")
        return await self._run(functools.partial(self._begin_turn, request))

    async def get_turn(
        self, owner: Owner, user_message_id: str, *, assistant_message_id: str = ""
    ) -> Turn:
        key = assistant_message_id or user_message_id
        if not is_valid_id(key):
            raise errors.NotFound("turn not found")
        by = "assistant_message_id" if assistant_message_id else "user_message_id"
        return await self._run(functools.partial(_get_turn, owner, key, by))

    async def release_turn(
        self, owner: Owner, user_message_id: str, *, assistant_message_id: str = ""
    ) -> bool:
        key = assistant_message_id or user_message_id
        if not is_valid_id(key):
            raise errors.NotFound("turn not found")
        by = "assistant_message_id" if assistant_message_id else "user_message_id"
        return await self._run(functools.partial(self._release_turn, owner, key, by))

    def _release_turn(
        self, owner: Owner, key: str, by: str, connection: sqlite3.Connection
    ) -> bool:
        with _write_transaction(connection):
            row = connection.execute(
                "SELECT assistant_message_id, user_message_id FROM turns"
                f" WHERE {by} = ? AND tenant_id = ? AND user_id = ?",
                (key, owner.tenant_id, owner.user_id),
            ).fetchone()
            if row is None:
                raise errors.NotFound("turn not found")
            stored = connection.execute(
                "SELECT 1 FROM messages WHERE message_id = ?", (row[0],)
            ).fetchone()
            if stored is not None:
                return False
            connection.execute(
                "UPDATE turns SET lease_expire_time_us = ? WHERE user_message_id = ?",
                (self._now_us(), row[1]),
            )
        return True

    async def list_conversations(
        self, owner: Owner, *, limit: int, after: ConversationCursor | None = None
    ) -> ConversationPage:
        require_limit(limit)
        return await self._run(functools.partial(_list_conversations, owner, limit, after))

    async def get_conversation(
        self,
        owner: Owner,
        conversation_id: str,
        *,
        limit: int,
        after: MessageCursor | None = None,
    ) -> ConversationHistory:
        require_history_request(conversation_id, limit, after)
        work = functools.partial(_get_conversation, owner, conversation_id, limit, after)
        return await self._run(work)

    async def delete_conversation(self, owner: Owner, conversation_id: str) -> datetime:
        if not is_valid_id(conversation_id):
            raise errors.NotFound("conversation not found")
        return await self._run(functools.partial(self._delete_conversation, owner, conversation_id))

    async def submit_feedback(self, owner: Owner, feedback: Feedback) -> datetime:
        if not is_valid_id(feedback.message_id):
            raise errors.NotFound("assistant message not found")
        return await self._run(functools.partial(self._submit_feedback, owner, feedback))

    async def create_api_key(
        self,
        owner: Owner,
        label: str,
        roles: frozenset[str] = frozenset({"chat"}),
        actor: AuditActor | None = None,
    ) -> IssuedApiKey:
        now = self._clock()
        issued = issue_api_key(owner, label, now, roles)
        work = functools.partial(identity.create_api_key, issued, actor or AuditActor(), now)
        await self._run(work)
        return issued

    async def get_api_key(self, key_id: str) -> ApiKey:
        if not is_valid_id(key_id):
            raise errors.NotFound("api key not found")
        return await self._run(functools.partial(identity.get_api_key, key_id))

    async def iter_messages(self, after: str | None, limit: int) -> list[Message]:
        require_limit(limit)
        return await self._run(functools.partial(_iter_messages, after, limit))

    async def write_messages(self, messages: Sequence[Message]) -> int:
        if not messages:
            return 0
        return await self._run(functools.partial(self._write_messages, tuple(messages)))

    async def get_answer(self, owner: Owner, assistant_message_id: str) -> Answer:
        if not is_valid_id(assistant_message_id):
            raise errors.NotFound("message not found")
        return await self._run(functools.partial(_get_answer, owner, assistant_message_id))

    # Token quotas (chatplane.persistence.store.sqlite_quota), each in one write transaction.
    async def reserve_tokens(
        self, tenant_id: str, reservation_id: str, tokens: int, lease: timedelta
    ) -> QuotaReservation:
        work = functools.partial(
            sqlite_quota.reserve,
            tenant_id=tenant_id,
            reservation_id=reservation_id,
            tokens=tokens,
            lease=lease,
            now=self._clock(),
        )
        return await self._run(lambda connection: _in_write_transaction(connection, work))

    async def settle_tokens(self, tenant_id: str, reservation_id: str, used: int) -> TokenQuota:
        work = functools.partial(
            sqlite_quota.settle,
            tenant_id=tenant_id,
            reservation_id=reservation_id,
            used=used,
            now=self._clock(),
        )
        return await self._run(lambda connection: _in_write_transaction(connection, work))

    async def set_token_quota(self, tenant_id: str, tokens_per_day: int) -> TokenQuota:
        work = functools.partial(
            sqlite_quota.set_limit,
            tenant_id=tenant_id,
            tokens_per_day=tokens_per_day,
            now=self._clock(),
        )
        return await self._run(lambda connection: _in_write_transaction(connection, work))

    async def get_token_quota(self, tenant_id: str) -> TokenQuota:
        work = functools.partial(sqlite_quota.quota, tenant_id=tenant_id, now=self._clock())
        return await self._run(work)

    async def report_variants(
        self, tenant_id: str | None = None, since: datetime | None = None
    ) -> list[VariantStats]:
        return await self._run(functools.partial(_report_variants, tenant_id, since))

    async def list_rated_answers(self, query: RatedAnswerQuery) -> list[RatedAnswerRow]:
        if not query.tenants:
            return []
        sql, parameters = rated_answers_sql(
            query, time_column="create_time_us", placeholder="?", time_in=to_micros
        )
        return await self._run(
            lambda connection: [
                rated_answer_row(row, from_micros) for row in connection.execute(sql, parameters)
            ]
        )

    async def get_handoff(self, owner: Owner, conversation_id: str) -> HandoffState:
        if not is_valid_id(conversation_id):
            raise errors.NotFound("conversation not found")
        return await self._run(
            functools.partial(sqlite_handoff.get_handoff, owner, conversation_id)
        )

    async def change_handoff(
        self, owner: Owner, conversation_id: str, change: HandoffChange
    ) -> HandoffState:
        if not is_valid_id(conversation_id):
            raise errors.NotFound("conversation not found")
        work = functools.partial(
            sqlite_handoff.change_handoff, owner, conversation_id, change, self._now_us()
        )
        return await self._run(work)

    async def list_handoffs(
        self, tenant_id: str, *, limit: int, after: HandoffCursor | None = None
    ) -> HandoffPage:
        require_limit(limit)
        return await self._run(
            functools.partial(sqlite_handoff.list_handoffs, tenant_id, limit, after)
        )

    async def tenant_handoff(self, tenant_id: str, conversation_id: str) -> HandoffState:
        if not is_valid_id(conversation_id):
            raise errors.NotFound("conversation not found")
        return await self._run(
            functools.partial(sqlite_handoff.tenant_handoff, tenant_id, conversation_id)
        )

    async def count_thumbs_down(self, owner: Owner, message_id: str) -> tuple[str, int]:
        if not is_valid_id(message_id):
            raise errors.NotFound("message not found")
        return await self._run(
            functools.partial(sqlite_handoff.count_thumbs_down, owner, message_id)
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            # Queued behind any work already submitted, so that work finishes first.
            await asyncio.wrap_future(self._executor.submit(self._close_connection))
        finally:
            self._executor.shutdown(wait=False)

    async def tree_skeleton(self, owner: Owner, conversation_id: str) -> TreeSkeleton:
        now_us = self._now_us()

        def read(connection: sqlite3.Connection) -> TreeSkeleton:
            with _read_transaction(connection):
                return sqlite_tree.skeleton(connection, owner, conversation_id, now_us)

        return await self._run(read)

    async def messages_by_id(self, owner: Owner, message_ids: Sequence[str]) -> dict[str, Message]:
        def read(connection: sqlite3.Connection) -> dict[str, Message]:
            found: dict[str, Message] = {}
            for start in range(0, len(message_ids), _IN_CHUNK):
                chunk = list(message_ids[start : start + _IN_CHUNK])
                rows = connection.execute(
                    f"SELECT {_MESSAGE_COLUMNS} FROM messages"
                    f" WHERE message_id IN ({', '.join('?' * len(chunk))})"
                    " AND tenant_id = ? AND user_id = ?",
                    (*chunk, owner.tenant_id, owner.user_id),
                )
                found.update((m.message_id, m) for m in map(_message_from_row, rows))
            return found

        return await self._run(read)

    async def store_active_leaf(self, owner: Owner, conversation_id: str, leaf: str) -> None:
        def write(connection: sqlite3.Connection) -> None:
            with _write_transaction(connection):
                connection.execute(
                    "UPDATE conversations SET active_message_id = ?"
                    " WHERE conversation_id = ? AND tenant_id = ? AND user_id = ?",
                    (leaf, conversation_id, owner.tenant_id, owner.user_id),
                )

        await self._run(write)

    # Key management and the audit chain (sqlite_identity.py).

    async def list_api_keys(
        self,
        tenant_id: str,
        user_id: str = "",
        *,
        limit: int,
        after: ApiKeyCursor | None = None,
        include_revoked: bool = False,
    ) -> ApiKeyPage:
        require_limit(limit)
        work = functools.partial(
            identity.list_api_keys, tenant_id, user_id, limit, after, include_revoked, self._clock()
        )
        return await self._run(work)

    async def rotate_api_key(
        self, tenant_id: str, key_id: str, overlap: timedelta, actor: AuditActor
    ) -> RotatedApiKey:
        if not is_valid_id(key_id):
            raise errors.NotFound("api key not found")
        work = functools.partial(
            identity.rotate_api_key, tenant_id, key_id, overlap, actor, self._clock()
        )
        return await self._run(work)

    async def revoke_api_key(self, tenant_id: str, key_id: str, actor: AuditActor) -> ApiKey:
        if not is_valid_id(key_id):
            raise errors.NotFound("api key not found")
        work = functools.partial(identity.revoke_api_key, tenant_id, key_id, actor, self._clock())
        return await self._run(work)

    async def append_audit(self, events: Sequence[AuditEvent]) -> AuditHead:
        return await self._run(functools.partial(identity.append_audit, events, self._clock()))

    async def audit_records(self, after_seq: int, limit: int) -> list[AuditRecord]:
        require_limit(limit)
        return await self._run(functools.partial(identity.audit_records, after_seq, limit))

    async def audit_head(self) -> AuditHead:
        return await self._run(identity.audit_head)

    async def user_message_facts(
        self, owner: Owner, *, limit: int, after: str | None = None
    ) -> list[MessageFacts]:
        require_limit(limit)
        query = facts_query(
            placeholder="?", feedback_time_column="create_time_us", after=bool(after)
        )
        parameters = facts_parameters(owner.tenant_id, owner.user_id, after or None, limit)
        rows = await self._run(lambda connection: connection.execute(query, parameters).fetchall())
        return [facts_from_row(row, from_micros) for row in rows]

    # Erasure and retention (chatplane.persistence.store.sqlite_erasure; docs/privacy.md).
    async def start_erasure(
        self, tenant_id: str, user_id: str, steps: Sequence[str], actor: AuditActor
    ) -> ErasureJob:
        work = functools.partial(
            sqlite_erasure.start,
            tenant_id=tenant_id,
            user_id=user_id,
            steps=steps,
            actor=actor,
            now=self._clock(),
        )
        return await self._run(lambda connection: _in_write_transaction(connection, work))

    async def get_erasure(self, job_id: str) -> ErasureJob:
        return await self._run(functools.partial(sqlite_erasure.load, job_id=job_id))

    async def unfinished_erasures(self) -> list[ErasureJob]:
        return await self._run(sqlite_erasure.unfinished)

    async def finish_erasure_step(
        self, job_id: str, position: int, removed: Mapping[str, int]
    ) -> ErasureJob:
        work = functools.partial(
            sqlite_erasure.finish_step,
            job_id=job_id,
            position=position,
            removed=removed,
            now=self._clock(),
        )
        return await self._run(lambda connection: _in_write_transaction(connection, work))

    async def finish_erasure(self, job_id: str) -> ErasureJob:
        work = functools.partial(sqlite_erasure.finish, job_id=job_id, now=self._clock())
        return await self._run(lambda connection: _in_write_transaction(connection, work))

    async def erase_user_rows(self, tenant_id: str, user_id: str) -> dict[str, int]:
        work = functools.partial(
            sqlite_erasure.erase_rows, tenant_id=tenant_id, user_id=user_id, now=self._clock()
        )
        return await self._run(lambda connection: _in_write_transaction(connection, work))

    async def set_retention(self, tenant_id: str, days: int) -> RetentionPolicy:
        require_retention_days(days)
        work = functools.partial(
            sqlite_erasure.set_policy, tenant_id=tenant_id, days=days, now=self._clock()
        )
        return await self._run(lambda connection: _in_write_transaction(connection, work))

    async def get_retention(self, tenant_id: str) -> RetentionPolicy:
        return await self._run(functools.partial(sqlite_erasure.policy, tenant_id=tenant_id))

    async def retention_policies(self) -> list[RetentionPolicy]:
        return await self._run(sqlite_erasure.policies)

    async def expire_conversations(
        self, tenant_id: str, before: datetime, limit: int
    ) -> list[ExpiredConversation]:
        require_limit(limit)
        work = functools.partial(
            sqlite_erasure.expire,
            tenant_id=tenant_id,
            before=before,
            limit=limit,
            now=self._clock(),
        )
        return await self._run(lambda connection: _in_write_transaction(connection, work))

    async def pending_expiries(self, limit: int) -> list[ExpiredConversation]:
        require_limit(limit)
        return await self._run(functools.partial(sqlite_erasure.pending, limit=limit))

    async def finish_expiries(self, conversation_ids: Sequence[str]) -> None:
        work = functools.partial(sqlite_erasure.finish_pending, conversation_ids=conversation_ids)
        await self._run(lambda connection: _in_write_transaction(connection, work))

    # Crypto-shredding (chatplane.crypto.keyring.DataKeyStore): wrapped per-user data keys.
    async def get_data_key(self, tenant_id: str, user_id: str) -> WrappedDataKey | None:
        return await self._run(functools.partial(data_keys.get_data_key, tenant_id, user_id))

    async def add_data_key(self, key: WrappedDataKey) -> WrappedDataKey:
        return await self._run(functools.partial(data_keys.add_data_key, key))

    async def rewrap_data_key(self, key: WrappedDataKey) -> None:
        await self._run(functools.partial(data_keys.rewrap_data_key, key))

    async def delete_data_key(self, tenant_id: str, user_id: str) -> bool:
        return await self._run(functools.partial(data_keys.delete_data_key, tenant_id, user_id))

    async def _run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._closed:
            raise errors.Unavailable("the conversation store is closed")
        future = self._executor.submit(lambda: work(self._open_connection()))
        try:
            return await asyncio.wrap_future(future)
        except sqlite3.Error as error:
            # Locked, full, or unreadable database: the caller may retry; a bug would not
            # be a sqlite3.Error (constraint violations that mean "bad request" are mapped
            # where they can happen).
            _log.warning("conversation store call failed", extra={"error": repr(error)})
            raise errors.Unavailable("the conversation store is unavailable") from error

    def _open_connection(self) -> sqlite3.Connection:
        if self._connection is None:
            self._connection = _connect(self._path, self._busy_timeout)
        return self._connection

    def _close_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _now_us(self) -> int:
        return to_micros(self._clock())

    def _begin_turn(self, request: TurnRequest, connection: sqlite3.Connection) -> TurnReservation:
        now_us = self._now_us()
        lease_us = request.lease // timedelta(microseconds=1)
        owner = request.owner
        with _write_transaction(connection):
            if request.client_message_id:
                row = connection.execute(
                    "SELECT conversation_id, coalesce(reply_to_message_id, user_message_id),"
                    " assistant_message_id, lease_expire_time_us FROM turns"
                    " WHERE tenant_id = ? AND user_id = ? AND client_message_id = ?",
                    (owner.tenant_id, owner.user_id, request.client_message_id),
                ).fetchone()
                if row is not None:
                    reclaimed = _reclaim_turn(connection, owner, row, now_us, lease_us)
                    if reclaimed.acquired:
                        return sqlite_tree.taken_over(connection, request, reclaimed, now_us)
                    return reclaimed
            conversation_id = (
                sqlite_tree.target_conversation(connection, request, now_us)
                or request.conversation_id
            )
            if conversation_id:
                if _conversation_owner(connection, conversation_id) != owner:
                    raise errors.NotFound("conversation not found")
            else:
                conversation_id = new_id()
                connection.execute(
                    f"INSERT INTO conversations ({_CONVERSATION_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, ?, 0)",
                    (
                        conversation_id,
                        owner.tenant_id,
                        owner.user_id,
                        request.title,
                        now_us,
                        now_us,
                    ),
                )
            expire_us = now_us + lease_us
            plan, tree = sqlite_tree.place_turn(connection, request, conversation_id, now_us)
            try:
                connection.execute(
                    "INSERT INTO turns (user_message_id, assistant_message_id, conversation_id,"
                    " tenant_id, user_id, client_message_id, lease_expire_time_us, create_time_us,"
                    " parent_message_id, reply_to_message_id)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        request.user_message_id,
                        request.assistant_message_id,
                        conversation_id,
                        owner.tenant_id,
                        owner.user_id,
                        request.client_message_id or None,
                        expire_us,
                        now_us,
                        plan.parent_message_id,
                        plan.reply_to_message_id or None,
                    ),
                )
            except sqlite3.IntegrityError as error:
                raise errors.AlreadyExists("the turn's message ids are reserved already") from error
            reservation = TurnReservation(
                conversation_id,
                request.user_message_id,
                request.assistant_message_id,
                acquired=True,
                complete=False,
                lease_expire_time=from_micros(expire_us),
            )
            return sqlite_tree.details(connection, request, reservation, plan, tree)

    def _delete_conversation(
        self, owner: Owner, conversation_id: str, connection: sqlite3.Connection
    ) -> datetime:
        now_us = self._now_us()
        with _write_transaction(connection):
            if _conversation_owner(connection, conversation_id) != owner:
                raise errors.NotFound("conversation not found")
            connection.execute(
                "INSERT INTO deleted_conversations"
                " (conversation_id, tenant_id, user_id, delete_time_us) VALUES (?, ?, ?, ?)",
                (conversation_id, owner.tenant_id, owner.user_id, now_us),
            )
            # Messages, their feedback and the turns go with it (ON DELETE CASCADE).
            connection.execute(
                "DELETE FROM conversations WHERE conversation_id = ?", (conversation_id,)
            )
        return from_micros(now_us)

    def _submit_feedback(
        self, owner: Owner, feedback: Feedback, connection: sqlite3.Connection
    ) -> datetime:
        now_us = self._now_us()
        with _write_transaction(connection):
            row = connection.execute(
                "SELECT role FROM messages WHERE message_id = ? AND tenant_id = ? AND user_id = ?",
                (feedback.message_id, owner.tenant_id, owner.user_id),
            ).fetchone()
            if row is None or row[0] != Role.ASSISTANT.value:
                raise errors.NotFound("assistant message not found")
            connection.execute(
                "INSERT INTO feedback"
                " (message_id, tenant_id, user_id, rating, comment, create_time_us, score)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (message_id, tenant_id, user_id) DO UPDATE SET"
                " rating = excluded.rating, comment = excluded.comment,"
                " create_time_us = excluded.create_time_us, score = excluded.score",
                (
                    feedback.message_id,
                    owner.tenant_id,
                    owner.user_id,
                    feedback.rating.value,
                    feedback.comment,
                    now_us,
                    feedback.score,
                ),
            )
        return from_micros(now_us)

    def _write_messages(self, messages: tuple[Message, ...], connection: sqlite3.Connection) -> int:
        now_us = self._now_us()
        with _write_transaction(connection):
            accepted, created = _admit(connection, messages)
            for conversation_id in created:
                first = [m for m in accepted if m.conversation_id == conversation_id]
                title = next((m.text for m in first if m.role is Role.USER), "")
                start_us = min(to_micros(m.create_time) for m in first)
                connection.execute(
                    f"INSERT INTO conversations ({_CONVERSATION_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, ?, 0)",
                    (
                        conversation_id,
                        first[0].owner.tenant_id,
                        first[0].owner.user_id,
                        derived_title(title),
                        start_us,
                        start_us,
                    ),
                )
            connection.executemany(
                f"INSERT INTO messages ({_MESSAGE_COLUMNS}, store_time_us)"
                f" VALUES ({_MESSAGE_PLACEHOLDERS}, ?)",
                [(*_message_row(m), now_us) for m in accepted],
            )
            connection.executemany(answer_deltas.INSERT_SQLITE, answer_deltas.delta_rows(accepted))
            connection.executemany(
                f"INSERT INTO answer_metrics ({ANSWER_METRICS_COLUMNS}, create_time_us)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                answer_metric_rows(accepted, to_micros),
            )
            growth: dict[str, tuple[int, int]] = {}
            for m in accepted:
                count, newest = growth.get(m.conversation_id, (0, 0))
                growth[m.conversation_id] = (count + 1, max(newest, to_micros(m.create_time)))
            connection.executemany(
                "UPDATE conversations SET message_count = message_count + ?,"
                " update_time_us = max(update_time_us, ?) WHERE conversation_id = ?",
                [(count, newest, cid) for cid, (count, newest) in growth.items()],
            )
        return len(accepted)


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: transactions are explicit, so a batch is exactly one transaction.
    connection = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
    try:
        # WAL: readers never block the consumer's writes. FULL: every commit fsyncs the WAL,
        # so a batch whose offsets were committed survives a power cut, not just a crash.
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise sqlite3.OperationalError(f"{path}: journal_mode is {mode}, WAL is required")
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("PRAGMA foreign_keys = ON")
        _migrate(connection, sqlite_migrations())
    except BaseException:
        connection.close()
        raise
    return connection


def _migrate(connection: sqlite3.Connection, migrations: Sequence[Migration]) -> None:
    """Apply the migrations newer than the database's version, all in one transaction, so a
    crash mid-way leaves the previous version intact and two processes never both apply one."""
    with _write_transaction(connection):
        connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, apply_time_us INTEGER NOT NULL)"
        )
        current = int(
            connection.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
        )
        if current > len(migrations):
            raise RuntimeError(
                f"the database is at schema version {current}; this code knows {len(migrations)}"
            )
        for migration in migrations[current:]:
            for statement in _statements(migration.script):
                connection.execute(statement)
            connection.execute(
                "INSERT INTO schema_version (version, name, apply_time_us) VALUES (?, ?, ?)",
                (migration.version, migration.name, to_micros(utc_now())),
            )
            _log.info("schema migrated", extra={"version": migration.version})


def _statements(script: str) -> Iterator[str]:
    """The statements of a migration script, one at a time: executescript would commit the
    migration's transaction after each script."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
    if any(line.strip() and not line.strip().startswith("--") for line in pending.splitlines()):
        raise ValueError(f"a migration ends in an incomplete statement: {pending!r}")


def _select_in(
    connection: sqlite3.Connection, query: str, values: Iterable[str]
) -> Iterator[tuple[Any, ...]]:
    """Rows of `query` (with one `{}` for the IN list) for all `values`, in chunks."""
    listed = list(values)
    for start in range(0, len(listed), _IN_CHUNK):
        chunk = listed[start : start + _IN_CHUNK]
        placeholders = ", ".join("?" * len(chunk))
        yield from connection.execute(query.format(placeholders), chunk)


def _conversation_owner(connection: sqlite3.Connection, conversation_id: str) -> Owner | None:
    row = connection.execute(
        "SELECT tenant_id, user_id FROM conversations WHERE conversation_id = ?",
        (conversation_id,),
    ).fetchone()
    return None if row is None else Owner(row[0], row[1])


def _reclaim_turn(
    connection: sqlite3.Connection,
    owner: Owner,
    row: tuple[Any, ...],
    now_us: int,
    lease_us: int,
) -> TurnReservation:
    """The answer to a BeginTurn whose idempotency key is reserved already."""
    conversation_id, user_message_id, assistant_message_id, expire_us = row
    complete = (
        connection.execute(
            "SELECT 1 FROM messages WHERE message_id = ? AND tenant_id = ? AND user_id = ?",
            (assistant_message_id, owner.tenant_id, owner.user_id),
        ).fetchone()
        is not None
    )
    acquired = not complete and expire_us <= now_us
    if acquired:
        # The previous owner's lease ran out before its answer was stored: this caller takes
        # the turn over with the same ids, so whichever answer is stored first is the one.
        expire_us = now_us + lease_us
        connection.execute(
            "UPDATE turns SET lease_expire_time_us = ? WHERE user_message_id = ?",
            (expire_us, user_message_id),
        )
    return TurnReservation(
        conversation_id,
        user_message_id,
        assistant_message_id,
        acquired=acquired,
        complete=complete,
        lease_expire_time=from_micros(expire_us),
    )


def _get_turn(owner: Owner, key: str, by: str, connection: sqlite3.Connection) -> Turn:
    with _read_transaction(connection):
        row = connection.execute(
            "SELECT conversation_id, assistant_message_id, lease_expire_time_us,"
            " coalesce(reply_to_message_id, user_message_id) FROM turns"
            f" WHERE {by} = ? AND tenant_id = ? AND user_id = ?",
            (key, owner.tenant_id, owner.user_id),
        ).fetchone()
        if row is None:
            raise errors.NotFound("turn not found")
        conversation_id, assistant_message_id, expire_us, user_message_id = row
        stored = {
            m.message_id: m
            for m in map(
                _message_from_row,
                connection.execute(
                    f"SELECT {_MESSAGE_COLUMNS} FROM messages"
                    " WHERE message_id IN (?, ?) AND tenant_id = ? AND user_id = ?",
                    (user_message_id, assistant_message_id, owner.tenant_id, owner.user_id),
                ),
            )
        }
    return Turn(
        conversation_id,
        user_message_id,
        assistant_message_id,
        from_micros(expire_us),
        stored.get(user_message_id),
        stored.get(assistant_message_id),
    )


def _get_answer(owner: Owner, assistant_message_id: str, connection: sqlite3.Connection) -> Answer:
    # By the answer's id: a regenerated answer's turn is keyed by a fresh id, not a message's.
    try:
        turn = _get_turn(owner, assistant_message_id, "assistant_message_id", connection)
    except errors.NotFound:
        raise errors.NotFound("message not found") from None
    ends = connection.execute(
        "SELECT delta_ends FROM answer_deltas WHERE message_id = ?", (assistant_message_id,)
    ).fetchone()
    return Answer(turn, answer_deltas.decode(ends[0] if ends else None))


def _list_conversations(
    owner: Owner, limit: int, after: ConversationCursor | None, connection: sqlite3.Connection
) -> ConversationPage:
    query = f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE tenant_id = ? AND user_id = ?"
    parameters: list[Any] = [owner.tenant_id, owner.user_id]
    if after is not None:
        query += " AND (update_time_us, conversation_id) < (?, ?)"
        parameters += [to_micros(after.update_time), after.conversation_id]
    query += " ORDER BY update_time_us DESC, conversation_id DESC LIMIT ?"
    rows = connection.execute(query, [*parameters, limit + 1]).fetchall()
    conversations = tuple(_conversation_from_row(row) for row in rows[:limit])
    cursor = None
    if len(rows) > limit:
        last = conversations[-1]
        cursor = ConversationCursor(last.update_time, last.conversation_id)
    return ConversationPage(conversations, cursor)


def _get_conversation(
    owner: Owner,
    conversation_id: str,
    limit: int,
    after: MessageCursor | None,
    connection: sqlite3.Connection,
) -> ConversationHistory:
    with _read_transaction(connection):
        row = connection.execute(
            f"SELECT {_CONVERSATION_COLUMNS} FROM conversations"
            " WHERE conversation_id = ? AND tenant_id = ? AND user_id = ?",
            (conversation_id, owner.tenant_id, owner.user_id),
        ).fetchone()
        if row is None:
            raise errors.NotFound("conversation not found")
        conversation = _conversation_from_row(row)
        query = (
            f"SELECT {_MESSAGE_COLUMNS}, position FROM messages"
            " WHERE conversation_id = ? AND tenant_id = ?"
        )
        parameters: list[Any] = [conversation_id, owner.tenant_id]
        if after is not None:
            query += " AND (create_time_us, position) > (?, ?)"
            parameters += [to_micros(after.create_time), after.position]
        query += " ORDER BY create_time_us, position LIMIT ?"
        rows = connection.execute(query, [*parameters, limit + 1]).fetchall()
    messages = tuple(_message_from_row(row) for row in rows[:limit])
    cursor = None
    if len(rows) > limit:
        cursor = MessageCursor(conversation_id, messages[-1].create_time, rows[limit - 1][-1])
    return ConversationHistory(conversation, messages, cursor)


def _iter_messages(after: str | None, limit: int, connection: sqlite3.Connection) -> list[Message]:
    # Keyed by the unique index on message_id; text compares byte by byte (BINARY).
    query = f"SELECT {_MESSAGE_COLUMNS} FROM messages"
    parameters: list[Any] = []
    if after is not None:
        query += " WHERE message_id > ?"
        parameters.append(after)
    query += " ORDER BY message_id LIMIT ?"
    return [_message_from_row(row) for row in connection.execute(query, [*parameters, limit])]


def _report_variants(
    tenant_id: str | None, since: datetime | None, connection: sqlite3.Connection
) -> list[VariantStats]:
    query = report_query(
        time_column="create_time_us",
        placeholder="?",
        tenant=tenant_id is not None,
        since=since is not None,
    )
    parameters: list[Any] = [] if tenant_id is None else [tenant_id]
    if since is not None:
        parameters.append(to_micros(since))
    return [stats_from_row(row) for row in connection.execute(query, parameters)]


def _admit(
    connection: sqlite3.Connection, messages: Sequence[Message]
) -> tuple[list[Message], list[str]]:
    """Decide, before writing anything, which messages of a batch to insert: returns them
    and the conversations to create for them, or raises MessagesRejected."""
    conversation_ids = {m.conversation_id for m in messages}
    owners = {
        cid: Owner(tenant_id, user_id)
        for cid, tenant_id, user_id in _select_in(
            connection,
            "SELECT conversation_id, tenant_id, user_id FROM conversations"
            " WHERE conversation_id IN ({})",
            conversation_ids,
        )
    }
    deleted = {
        row[0]
        for row in _select_in(
            connection,
            "SELECT conversation_id FROM deleted_conversations WHERE conversation_id IN ({})",
            conversation_ids,
        )
    }
    placed = {
        message_id: (cid, Owner(tenant_id, user_id))
        for message_id, cid, tenant_id, user_id in _select_in(
            connection,
            "SELECT message_id, conversation_id, tenant_id, user_id FROM messages"
            " WHERE message_id IN ({})",
            {m.message_id for m in messages},
        )
    }
    return admit_batch(messages, owners, deleted, placed)


def _message_row(message: Message) -> tuple[Any, ...]:
    return message_row(message, to_micros)


def _message_from_row(row: Sequence[Any]) -> Message:
    return message_from_row(row, from_micros)


def _conversation_from_row(row: Sequence[Any]) -> Conversation:
    return conversation_from_row(row, from_micros)
