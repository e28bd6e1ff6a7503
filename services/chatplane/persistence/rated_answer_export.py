"""Rated answers as they may leave the system of record for feedback datasets
(docs/datasets.md): only tenants that opted in, each answer with the branch of its
conversation that led to it, masked when the tenant has PII redaction on."""

from __future__ import annotations

from dataclasses import dataclass

from chatplane.common import errors
from chatplane.persistence.store.base import ConversationStore, Owner, Role
from chatplane.persistence.store.rated_answers import RatedAnswerQuery, RatedAnswerRow
from chatplane.persistence.store.tree_store import TreeQueries
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


class NotOptedIn(errors.FailedPrecondition):
    """The tenant asked for did not opt in to feedback datasets."""


class RatedAnswerExport:
    """Pages rated answers of the tenants in `opted_in`, masked by `redaction`."""

    def __init__(
        self, store: ConversationStore, opted_in: frozenset[str], redaction: RedactionPolicy
    ) -> None:
        if not isinstance(store, TreeQueries):
            raise TypeError("the store must read conversation trees")
        self._store = store
        self._trees: TreeQueries = store
        self._opted_in = opted_in
        self._redaction = redaction

    def tenants(self, tenant_id: str) -> tuple[str, ...]:
        """The tenants a request covers: the one named (it must have opted in) or all."""
        if not tenant_id:
            return tuple(sorted(self._opted_in))
        if tenant_id not in self._opted_in:
            raise NotOptedIn("the tenant has not opted in to feedback datasets (docs/datasets.md)")
        return (tenant_id,)

    async def page(self, query: RatedAnswerQuery) -> list[ExportedAnswer]:
        """The answers of one page with their branches."""
        rows = await self._store.list_rated_answers(query)
        return [await self._exported(row) for row in rows]

    async def _exported(self, row: RatedAnswerRow) -> ExportedAnswer:
        owner = Owner(row.tenant_id, row.user_id)
        skeleton = await self._trees.tree_skeleton(owner, row.conversation_id)
        path = skeleton.tree().path(row.message_id)
        messages = await self._trees.messages_by_id(owner, path)
        redacted = self._redaction.applies(row.tenant_id)
        branch = tuple(
            BranchText(messages[m].role, self._redaction.text(row.tenant_id, messages[m].text))
            for m in path
            if m in messages
        )
        return ExportedAnswer(row, branch, redacted)
