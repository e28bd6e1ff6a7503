"""Erasure jobs and retention periods in the system of record: the records, and the
`ErasureLedger` interface every store engine implements (docs/privacy.md).

An erasure is a job of ordered steps (destroy the user's data key, delete their rows, their
memory, their log records). The job and each step's outcome are stored as they happen, so a
job cut short by a crash is resumed where it stopped; every step is idempotent, so running
one twice removes nothing more. The job's row stays as the proof of the erasure (ids and
counts, never content).
"""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Final

from chatplane.common import errors

if TYPE_CHECKING:  # key_records imports the store's base, which imports this module
    from chatplane.audit.chain import AuditEvent
    from chatplane.persistence.store.key_records import AuditActor

USER_ERASE: Final = "user.erase"
"""The audit action of an erasure (chatplane.audit names the same string)."""

MAX_RETENTION_DAYS: Final = 36_500
"""The longest retention period that may be set (100 years); longer is "forever" (0)."""

# Every table the erasure of a user removes rows from, in the order they are deleted (the
# ones that reference messages before messages, messages before conversations).
ERASED_TABLES: Final = (
    "feedback",
    "answer_deltas",
    "answer_metrics",
    "handoffs",
    "turns",
    "messages",
    "conversations",
    "api_keys",
)
# Tombstones of deleted conversations keep their id (so that a late log record never brings
# one back) but lose the user's id: counted under this name.
ANONYMISED_TOMBSTONES: Final = "deleted_conversations"


@dataclass(frozen=True, slots=True)
class ErasureStep:
    """One step of an erasure job; `finish_time` None while it is still to run."""

    name: str
    removed: Mapping[str, int] = field(default_factory=dict)
    finish_time: datetime | None = None

    @property
    def done(self) -> bool:
        """True once the step ran to its end."""
        return self.finish_time is not None


@dataclass(frozen=True, slots=True)
class ErasureJob:
    """An erasure of one user of one tenant and its progress."""

    job_id: str
    tenant_id: str
    user_id: str
    actor: AuditActor
    conversation_ids: tuple[str, ...]
    create_time: datetime
    steps: tuple[ErasureStep, ...]
    finish_time: datetime | None = None

    @property
    def finished(self) -> bool:
        """True once every step ran and the erasure was audited."""
        return self.finish_time is not None

    def audit_object(self) -> str:
        """The erased user as the audit log names them."""
        return f"user/{self.tenant_id}/{self.user_id}"

    def audit_detail(self) -> str:
        """What the audit record says: the job and the counts per step (no content)."""
        counts = {step.name: dict(step.removed) for step in self.steps}
        return json.dumps({"job_id": self.job_id, "removed": counts}, sort_keys=True)


def erasure_event(job: ErasureJob) -> AuditEvent:
    """The one audit record of a finished erasure (ids and counts only)."""
    return job.actor.event(
        tenant_id=job.tenant_id,
        action=USER_ERASE,
        object=job.audit_object(),
        detail=job.audit_detail(),
    )


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """A tenant's retention period: conversations without activity for `days` are deleted;
    0 days means none is set (keep forever)."""

    tenant_id: str
    days: int
    update_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class ExpiredConversation:
    """A conversation the retention sweep deleted."""

    tenant_id: str
    user_id: str
    conversation_id: str


def require_retention_days(days: int) -> None:
    """InvalidArgument unless 0 (no period) <= days <= MAX_RETENTION_DAYS."""
    if not 0 <= days <= MAX_RETENTION_DAYS:
        raise errors.InvalidArgument(
            "days", f"must be between 0 (keep forever) and {MAX_RETENTION_DAYS}"
        )


def removed_column(removed: Mapping[str, int]) -> str:
    """The stored form of a step's counts."""
    return json.dumps(dict(removed), sort_keys=True)


def removed_from_column(value: str) -> dict[str, int]:
    """A step's counts from their stored form."""
    loaded = json.loads(value or "{}")
    return {str(name): int(count) for name, count in loaded.items()}


def ids_column(ids: Sequence[str]) -> str:
    """Conversation ids as one column (ids never contain spaces)."""
    return " ".join(ids)


def ids_from_column(value: str) -> tuple[str, ...]:
    """Conversation ids from their stored form."""
    return tuple(value.split())


class ErasureLedger(abc.ABC):
    """Erasure jobs and retention periods, shared by every replica through the store."""

    @abc.abstractmethod
    async def start_erasure(
        self, tenant_id: str, user_id: str, steps: Sequence[str], actor: AuditActor
    ) -> ErasureJob:
        """The user's unfinished erasure job, or a new one with `steps` to run (and a snapshot
        of the user's conversation ids, deleted ones included)."""

    @abc.abstractmethod
    async def get_erasure(self, job_id: str) -> ErasureJob:
        """The job (NotFound when there is none)."""

    @abc.abstractmethod
    async def unfinished_erasures(self) -> list[ErasureJob]:
        """Every job not finished yet (cut short by a crash or a failing store), oldest first."""

    @abc.abstractmethod
    async def finish_erasure_step(
        self, job_id: str, position: int, removed: Mapping[str, int]
    ) -> ErasureJob:
        """Records that the step at `position` ran with these counts; the first record of a
        step wins (a step run twice keeps its first counts)."""

    @abc.abstractmethod
    async def finish_erasure(self, job_id: str) -> ErasureJob:
        """Marks the job finished and appends its one audit record, in one transaction (a
        job finished before is returned as it is, audited once)."""

    @abc.abstractmethod
    async def erase_user_rows(self, tenant_id: str, user_id: str) -> dict[str, int]:
        """Deletes every row of the user (ERASED_TABLES) and takes the user's id off the
        tombstones of their deleted conversations, in one transaction; the rows removed per
        table. A second call removes nothing."""

    @abc.abstractmethod
    async def set_retention(self, tenant_id: str, days: int) -> RetentionPolicy:
        """Sets the tenant's retention period; 0 removes it (keep forever)."""

    @abc.abstractmethod
    async def get_retention(self, tenant_id: str) -> RetentionPolicy:
        """The tenant's retention period (0 days when none is set)."""

    @abc.abstractmethod
    async def retention_policies(self) -> list[RetentionPolicy]:
        """Every tenant's retention period that is set."""

    @abc.abstractmethod
    async def expire_conversations(
        self, tenant_id: str, before: datetime, limit: int
    ) -> list[ExpiredConversation]:
        """Deletes up to `limit` of the tenant's conversations whose last activity
        (update time) is before `before`, with everything that goes with them (as
        delete_conversation does, tombstone included), and notes them as pending (their
        memory and log records are still to go); the ones deleted."""

    @abc.abstractmethod
    async def pending_expiries(self, limit: int) -> list[ExpiredConversation]:
        """Up to `limit` expired conversations whose memory and log records are still to be
        removed (a sweep cut short), oldest first."""

    @abc.abstractmethod
    async def finish_expiries(self, conversation_ids: Sequence[str]) -> None:
        """Forgets that these expired conversations are pending (their memory and log
        records are gone)."""
