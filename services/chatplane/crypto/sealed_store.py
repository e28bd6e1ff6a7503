"""The system of record with personal text sealed: wraps a ConversationStore so that message
text, conversation titles and feedback comments are written sealed with their owner's data
key and read back opened. Text that arrives sealed already (from the message log) is stored
as it is; text whose key was destroyed reads as ERASED_TEXT.

It fails closed: the methods that carry personal text are wrapped here (the store's own, and
those of its parts `handoffs` and `trees`), the reviewed methods and parts that carry none are
named in PASS_THROUGH and forwarded, and any other attribute raises AttributeError, so a store
method added later cannot hand out ciphertext or store plaintext until someone decides which
it is (docs/security.md, "Encryption at rest"; tests/unit/crypto/test_sealed_store_coverage.py
checks every method of the store and of its parts).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final, cast

from chatplane.crypto.envelope import is_sealed
from chatplane.crypto.keyring import Keyring
from chatplane.persistence.store.answer_deltas import valid_delta_ends
from chatplane.persistence.store.base import (
    Answer,
    BranchMessage,
    Conversation,
    ConversationHistory,
    ConversationPage,
    ConversationStore,
    ConversationTreePage,
    Feedback,
    Message,
    MessageFacts,
    Owner,
    PlacedMessage,
    Turn,
    TurnRequest,
    TurnReservation,
    derived_title,
)
from chatplane.persistence.store.handoff import HandoffChange, HandoffPage, Handoffs, HandoffState
from chatplane.persistence.store.tree_store import ConversationTrees, TreeSkeleton

PASS_THROUGH: Final = frozenset(
    {
        # Turn leases and deletion: ids in, a flag or a time out.
        "release_turn",
        "delete_conversation",
        # Parts of the store that carry no personal text, forwarded whole (each of their
        # methods is checked like these: tests/unit/crypto/test_sealed_store_coverage.py).
        # Answer metrics and feedback datasets: ids, ratings, counts, latencies. The dataset
        # export reads each branch's text through the wrapped trees.
        "analytics",
        # Token quota ledger: tenant ids and token counts.
        "quota",
        # Variant registry: operators' variant specs and deployments, no user's text (an
        # operator's reason for a change is stored in clear on purpose: CLEAR_TEXT).
        "registry",
        # API keys: ids, an administrator's label, secret hashes, roles.
        "api_keys",
        # The audit chain: never content, by design (docs/security.md, "Audit log").
        "audit",
        # Erasure ledger and retention: ids, step names, row counts, days.
        "erasures",
        "retention",
        # Data keys: wrapped by the KEK; key material, not text.
        "data_keys",
        # Lifecycle.
        "close",
    }
)
"""The inner store's attributes that carry no personal text: the only ones forwarded as
they are."""

CLEAR_TEXT: Final = frozenset({"registry.promote_variant", "registry.rollback_variant"})
"""Forwarded methods that take text on purpose: an operator's reason for a deployment change,
with no owner whose key could seal it, is stored in clear (docs/variants.md)."""

# A classmethod that opens a new store: through the wrapper it would hand out an unsealed one.
WITHHELD: Final = frozenset({"open"})
"""Public names of the store deliberately not reachable through the sealed store."""


class Sealer:
    """Seals and opens the personal text of the store's records with the keyring."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    async def sealed(self, message: Message) -> Message:
        if is_sealed(message.text):
            return message  # sealed by the Agent or the Gateway before the log
        owner = message.owner
        text = await self.keyring.seal(
            owner.tenant_id, owner.user_id, message.message_id, message.text
        )
        return message if text is message.text else dataclasses.replace(message, text=text)

    async def open(self, owner: Owner, value: str, record_id: str | None) -> str:
        return await self.keyring.open_or_erased(owner.tenant_id, owner.user_id, value, record_id)

    async def message(self, message: Message) -> Message:
        text = await self.open(message.owner, message.text, message.message_id)
        return message if text is message.text else dataclasses.replace(message, text=text)

    async def facts(self, owner: Owner, facts: MessageFacts) -> MessageFacts:
        feedback = facts.feedback
        if feedback is None:
            return facts
        comment = await self.open(owner, feedback.comment, facts.message_id)
        if comment is feedback.comment:
            return facts
        return dataclasses.replace(facts, feedback=dataclasses.replace(feedback, comment=comment))

    async def placed(self, placed: PlacedMessage) -> PlacedMessage:
        return dataclasses.replace(placed, message=await self.message(placed.message))

    async def conversation(self, conversation: Conversation) -> Conversation:
        # A title is sealed by BeginTurn, or is the first message's sealed text when the
        # conversation was created from the log: its record id is not the conversation's.
        title = await self.open(conversation.owner, conversation.title, None)
        if title is conversation.title:
            return conversation
        return dataclasses.replace(conversation, title=derived_title(title))

    async def handoff(self, state: HandoffState) -> HandoffState:
        reason = await self.open(state.owner, state.reason, state.conversation_id)
        return state if reason is state.reason else dataclasses.replace(state, reason=reason)

    async def opened_turn(self, turn: Turn) -> Turn:
        user, assistant = turn.user_message, turn.assistant_message
        return dataclasses.replace(
            turn,
            user_message=None if user is None else await self.message(user),
            assistant_message=None if assistant is None else await self.message(assistant),
        )

    async def branch_message(self, owner: Owner, message: BranchMessage) -> BranchMessage:
        if message.text is None:
            return message
        text = await self.open(owner, message.text, message.message_id)
        return dataclasses.replace(message, text=text)


class SealedHandoffs:
    """`store.handoffs` with the reasons users give sealed (a user's own text)."""

    def __init__(self, inner: Handoffs, sealer: Sealer) -> None:
        self._inner = inner
        self._sealer = sealer

    async def get(self, owner: Owner, conversation_id: str) -> HandoffState:
        return await self._sealer.handoff(await self._inner.get(owner, conversation_id))

    async def change(
        self, owner: Owner, conversation_id: str, change: HandoffChange
    ) -> HandoffState:
        # The reason a user gives when asking for a person is their own text.
        reason = await self._sealer.keyring.seal(
            owner.tenant_id, owner.user_id, conversation_id, change.reason
        )
        state = await self._inner.change(
            owner, conversation_id, dataclasses.replace(change, reason=reason)
        )
        return await self._sealer.handoff(state)

    async def waiting(self, tenant_id: str, **kwargs: Any) -> HandoffPage:
        page = await self._inner.waiting(tenant_id, **kwargs)
        return dataclasses.replace(
            page, handoffs=tuple([await self._sealer.handoff(h) for h in page.handoffs])
        )

    async def of_tenant(self, tenant_id: str, conversation_id: str) -> HandoffState:
        return await self._sealer.handoff(await self._inner.of_tenant(tenant_id, conversation_id))

    async def count_thumbs_down(self, owner: Owner, message_id: str) -> tuple[str, int]:
        # The conversation id and a count: nothing to open.
        return await self._inner.count_thumbs_down(owner, message_id)


class SealedTrees:
    """`store.trees` with what it reads opened."""

    def __init__(self, inner: ConversationTrees, sealer: Sealer) -> None:
        self._inner = inner
        self._sealer = sealer

    async def page(self, owner: Owner, conversation_id: str, **kwargs: Any) -> ConversationTreePage:
        page = await self._inner.page(owner, conversation_id, **kwargs)
        return dataclasses.replace(
            page,
            conversation=await self._sealer.conversation(page.conversation),
            messages=tuple([await self._sealer.placed(p) for p in page.messages]),
        )

    async def set_active_branch(
        self, owner: Owner, conversation_id: str, message_id: str
    ) -> Conversation:
        conversation = await self._inner.set_active_branch(owner, conversation_id, message_id)
        return await self._sealer.conversation(conversation)

    async def messages_by_id(self, owner: Owner, message_ids: Sequence[str]) -> dict[str, Message]:
        # The branches of feedback datasets (docs/datasets.md).
        found = await self._inner.messages_by_id(owner, message_ids)
        return {message_id: await self._sealer.message(m) for message_id, m in found.items()}

    async def skeleton(self, owner: Owner, conversation_id: str) -> TreeSkeleton:
        # The shape of a branch for feedback datasets; it carries the conversation's title.
        skeleton = await self._inner.skeleton(owner, conversation_id)
        return dataclasses.replace(
            skeleton, conversation=await self._sealer.conversation(skeleton.conversation)
        )


class SealedConversationStore:
    """A ConversationStore whose personal text is sealed at rest (see the module docstring)."""

    handoffs: SealedHandoffs
    trees: SealedTrees

    def __init__(self, inner: ConversationStore, keyring: Keyring) -> None:
        self._inner = inner
        self._sealer = sealer = Sealer(keyring)
        self.handoffs = SealedHandoffs(inner.handoffs, sealer)
        self.trees = SealedTrees(inner.trees, sealer)

    def __getattr__(self, name: str) -> Any:
        # Only called for names not defined here: the wrapped methods never reach it.
        if name in PASS_THROUGH:
            return getattr(self._inner, name)
        raise AttributeError(
            f"SealedConversationStore does not forward {name!r}: a store method that reads or"
            " writes personal text must be wrapped in chatplane/crypto/sealed_store.py, and one"
            " that carries none added to its PASS_THROUGH set (docs/security.md)"
        )

    # Writes.

    async def begin_turn(self, request: TurnRequest) -> TurnReservation:
        owner = request.owner
        title = await self._sealer.keyring.seal(
            owner.tenant_id, owner.user_id, request.user_message_id, request.title
        )
        reservation = await self._inner.begin_turn(dataclasses.replace(request, title=title))
        branch = reservation.branch
        if branch is not None:
            branch = tuple([await self._sealer.branch_message(owner, m) for m in branch])
        return dataclasses.replace(
            reservation,
            user_text=await self._sealer.open(
                owner, reservation.user_text, reservation.user_message_id
            ),
            branch=branch,
        )

    async def write_messages(self, messages: Sequence[Message]) -> int:
        return await self._inner.write_messages([await self._sealer.sealed(m) for m in messages])

    async def submit_feedback(self, owner: Owner, feedback: Feedback) -> datetime:
        comment = await self._sealer.keyring.seal(
            owner.tenant_id, owner.user_id, feedback.message_id, feedback.comment
        )
        return await self._inner.submit_feedback(
            owner, dataclasses.replace(feedback, comment=comment)
        )

    # Reads.

    async def get_turn(
        self, owner: Owner, user_message_id: str, *, assistant_message_id: str = ""
    ) -> Turn:
        turn = await self._inner.get_turn(
            owner, user_message_id, assistant_message_id=assistant_message_id
        )
        return await self._sealer.opened_turn(turn)

    async def list_conversations(self, owner: Owner, **kwargs: Any) -> ConversationPage:
        page = await self._inner.list_conversations(owner, **kwargs)
        return dataclasses.replace(
            page,
            conversations=tuple([await self._sealer.conversation(c) for c in page.conversations]),
        )

    async def get_conversation(
        self, owner: Owner, conversation_id: str, **kwargs: Any
    ) -> ConversationHistory:
        history = await self._inner.get_conversation(owner, conversation_id, **kwargs)
        return dataclasses.replace(
            history,
            conversation=await self._sealer.conversation(history.conversation),
            messages=tuple([await self._sealer.message(m) for m in history.messages]),
        )

    async def iter_messages(self, after: str | None, limit: int) -> list[Message]:
        return [
            await self._sealer.message(m) for m in await self._inner.iter_messages(after, limit)
        ]

    async def user_message_facts(self, owner: Owner, **kwargs: Any) -> list[MessageFacts]:
        # The export's feedback comments (docs/privacy.md, "Export").
        return [
            await self._sealer.facts(owner, facts)
            for facts in await self._inner.user_message_facts(owner, **kwargs)
        ]

    async def get_answer(self, owner: Owner, assistant_message_id: str) -> Answer:
        answer = await self._inner.get_answer(owner, assistant_message_id)
        turn = await self._sealer.opened_turn(answer.turn)
        stored = turn.assistant_message
        ends = valid_delta_ends(answer.delta_ends, stored.text) if stored is not None else ()
        return dataclasses.replace(answer, turn=turn, delta_ends=ends)


def sealed_store(inner: ConversationStore, keyring: Keyring) -> ConversationStore:
    """`inner` with its personal text sealed at rest, typed as the store it stands for."""
    return cast(ConversationStore, SealedConversationStore(inner, keyring))
