"""Rated answers as they may leave the system of record for feedback datasets
(docs/datasets.md): only tenants that opted in, each answer with the branch of its
conversation that led to it, masked when the tenant has PII redaction on."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from chatplane.common import errors
from chatplane.persistence.store.answer_metrics import RatedAnswerQuery, RatedAnswerRow
from chatplane.persistence.store.base import ConversationStore, Owner, Role
from chatplane.privacy.policy import RedactionPolicy


@dataclass(frozen=True, slots=True)
class BranchText:
    """One message of the branch: its role and (possibly masked) text."""

    role: Role
    text: str


@dataclass(frozen=True, slots=True)
class ExportedAnswer:
    """A rated answer and its branch, first message to the answer."""

    answer: RatedAnswerRow
    branch: tuple[BranchText, ...]
    redacted: bool


@dataclass(frozen=True, slots=True)
class ExportPage:
    """A page's answers and, when the page was full, where the next one starts (the last
    answer read, even one skipped because its conversation was deleted meanwhile)."""

    answers: list[ExportedAnswer]
    next_after: tuple[datetime, str] | None


class NotOptedIn(errors.FailedPrecondition):
    """The tenant asked for did not opt in to feedback datasets."""


class RatedAnswerExport:
    """Pages rated answers of the tenants in `opted_in`, masked by `redaction`."""

    def __init__(
        self, store: ConversationStore, opted_in: frozenset[str], redaction: RedactionPolicy
    ) -> None:
        self._store = store
        self._opted_in = opted_in
        self._redaction = redaction

    def tenants(self, tenant_id: str) -> tuple[str, ...]:
        """The tenants a request covers: the one named (it must have opted in) or all."""
        if not tenant_id:
            return tuple(sorted(self._opted_in))
        if tenant_id not in self._opted_in:
            raise NotOptedIn("the tenant has not opted in to feedback datasets (docs/datasets.md)")
        return (tenant_id,)

    async def page(self, query: RatedAnswerQuery) -> ExportPage:
        """The answers of one page with their branches."""
        rows = await self._store.analytics.rated_answers(query)
        exported = [await self._exported(row) for row in rows]
        last = rows[-1] if len(rows) == query.limit else None
        return ExportPage(
            [answer for answer in exported if answer is not None],
            None if last is None else (last.create_time, last.message_id),
        )

    async def _exported(self, row: RatedAnswerRow) -> ExportedAnswer | None:
        """The answer with its branch; None when its conversation was deleted meanwhile."""
        owner = Owner(row.tenant_id, row.user_id)
        try:
            skeleton = await self._store.trees.skeleton(owner, row.conversation_id)
        except errors.NotFound:
            return None
        tree = skeleton.tree()
        if not tree.is_stored(row.message_id):
            return None
        path = tree.path(row.message_id)
        messages = await self._store.trees.messages_by_id(owner, path)
        redacted = self._redaction.applies(row.tenant_id)
        branch = tuple(
            BranchText(messages[m].role, self._redaction.text(row.tenant_id, messages[m].text))
            for m in path
            if m in messages
        )
        return ExportedAnswer(row, branch, redacted)
