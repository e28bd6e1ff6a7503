"""Everything stored of one user for PrivacyService.ExportUserRecords (docs/privacy.md,
"Export"), streamed record by record while it is read from the store a page at a time, so an
export holds at most one page (plus one conversation's tree skeleton) in memory, however many
messages the user has. Conversations and messages come through the store's own read paths
(the same as history reads, decryption included); feedback and answer facts through
`user_message_facts`."""

from __future__ import annotations

from collections.abc import AsyncIterator

from chatplane.common import errors
from chatplane.common.timestamps import optional_timestamp_of
from chatplane.internal.v1 import privacy_pb2
from chatplane.persistence.protos import RATINGS, conversation_proto, message_proto
from chatplane.persistence.store.base import (
    ConversationCursor,
    ConversationStore,
    ConversationView,
    MessageCursor,
    MessageFacts,
    Owner,
)
from chatplane.persistence.tree_messages import placed_message

Record = privacy_pb2.ExportUserRecordsResponse


class UserRecords:
    """A user's records from the store, as ExportUserRecords streams them."""

    def __init__(self, store: ConversationStore) -> None:
        self._store = store

    async def records(self, owner: Owner, limit: int) -> AsyncIterator[Record]:
        """Conversations (each followed by its messages), then answer facts, then feedback;
        `limit` records per store read."""
        async for record in self._conversations(owner, limit):
            yield record
        # Answers first, then feedback: the archive lists them in that order.
        for kind in ("answer", "feedback"):
            async for record in self._facts(owner, limit, kind):
                yield record

    async def _conversations(self, owner: Owner, limit: int) -> AsyncIterator[Record]:
        after: ConversationCursor | None = None
        while True:
            page = await self._store.list_conversations(owner, limit=limit, after=after)
            for conversation in page.conversations:
                yield Record(conversation=conversation_proto(conversation))
                async for record in self._tree(owner, conversation.conversation_id, limit):
                    yield record
            if page.next_cursor is None:
                return
            after = page.next_cursor

    async def _tree(self, owner: Owner, conversation_id: str, limit: int) -> AsyncIterator[Record]:
        after: MessageCursor | None = None
        while True:
            try:
                page = await self._store.trees.page(
                    owner, conversation_id, view=ConversationView.TREE, limit=limit, after=after
                )
            except errors.NotFound:  # deleted while the export ran: it is not the user's now
                return
            for place in page.messages:
                yield Record(message=placed_message(message_proto(place.message), place))
            if not isinstance(page.next_cursor, MessageCursor):
                return
            after = page.next_cursor

    async def _facts(self, owner: Owner, limit: int, kind: str) -> AsyncIterator[Record]:
        after: str | None = None
        while True:
            page = await self._store.user_message_facts(owner, limit=limit, after=after)
            for facts in page:
                for record in _fact_records(facts):
                    if record.WhichOneof("record") == kind:
                        yield record
            if len(page) < limit:
                return
            after = page[-1].message_id


def _fact_records(facts: MessageFacts) -> list[Record]:
    records: list[Record] = []
    if facts.variant:
        answer = privacy_pb2.ExportedAnswer(
            message_id=facts.message_id,
            conversation_id=facts.conversation_id,
            variant=facts.variant,
            first_token_ms=facts.first_token_ms,  # None: unset
            duration_ms=facts.duration_ms,
        )
        records.append(Record(answer=answer))
    if facts.feedback is not None:
        feedback = privacy_pb2.ExportedFeedback(
            message_id=facts.message_id,
            conversation_id=facts.conversation_id,
            rating=RATINGS[facts.feedback.rating],
            score=facts.feedback.score or 0,
            comment=facts.feedback.comment,
            create_time=optional_timestamp_of(facts.feedback_time),
        )
        records.append(Record(feedback=feedback))
    return records
