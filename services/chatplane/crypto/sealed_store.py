"""The system of record with personal text sealed: wraps a ConversationStore so that message
text, conversation titles and feedback comments are written sealed with their owner's data
key and read back opened. Text that arrives sealed already (from the message log) is stored
as it is; text whose key was destroyed reads as ERASED_TEXT.

It fails closed: the methods that carry personal text are wrapped here, the reviewed methods
that carry none are named in PASS_THROUGH and forwarded, and any other attribute raises
AttributeError, so a store method added later cannot hand out ciphertext or store plaintext
until someone decides which it is (docs/security.md, "Encryption at rest";
tests/unit/crypto/test_sealed_store_coverage.py checks every method of both engines).
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
    Owner,
    PlacedMessage,
    Turn,
    TurnRequest,
    TurnReservation,
    derived_title,
)
from chatplane.persistence.store.handoff import HandoffChange, HandoffPage, HandoffState
from chatplane.persistence.store.tree_store import TreeQueries, TreeSkeleton
from chatplane.persistence.store.user_export import MessageFacts
from chatplane.persistence.store.variant_registry import ChangeRecord, Promotion

PASS_THROUGH: Final = frozenset(
    {
        # Turn leases, deletion and the active leaf: ids in, a flag or a time out.
        "release_turn",
        "delete_conversation",
        "store_active_leaf",
        # Handoff's thumbs-down trigger: the conversation id and a count.
        "count_thumbs_down",
        # Answer metrics and feedback datasets: ids, ratings, counts, latencies. The dataset
        # export reads each branch's text through the wrapped tree_skeleton and messages_by_id.
        "report_variants",
        "list_rated_answers",
        # Token quota ledger: tenant ids and token counts.
        "reserve_tokens",
        "settle_tokens",
        "set_token_quota",
        "get_token_quota",
        # Variant registry: operators' variant specs and deployments, no user's text (the
        # writes that take an operator's reason are wrapped below, so that it is a decision).
        "get_variant",
        "list_variants",
        "push_variant",
        "variant_deployment",
        "variant_changes",
        # API keys: ids, an administrator's label, secret hashes, roles.
        "create_api_key",
        "get_api_key",
        "list_api_keys",
        "rotate_api_key",
        "revoke_api_key",
        # The audit chain: never content, by design (docs/security.md, "Audit log").
        "append_audit",
        "audit_records",
        "audit_head",
        # Erasure ledger and retention: ids, step names, row counts, days.
        "start_erasure",
        "get_erasure",
        "unfinished_erasures",
        "finish_erasure_step",
        "finish_erasure",
        "erase_user_rows",
        "set_retention",
        "get_retention",
        "retention_policies",
        "expire_conversations",
        "pending_expiries",
        "finish_expiries",
        # Data keys: wrapped by the KEK; key material, not text.
        "get_data_key",
        "add_data_key",
        "rewrap_data_key",
        "delete_data_key",
        # Lifecycle.
        "close",
    }
)
"""The inner store's methods that carry no personal text: the only attributes forwarded as
they are."""

WITHHELD: Final = frozenset(
    {
        # A classmethod that opens a new store: through the wrapper it would hand out an
        # unsealed one.
        "open",
        # How the store writes batches (COPY or executemany): nothing reads it through the
        # sealed store.
        "write_method",
    }
)
"""Public names of the store deliberately not reachable through the sealed store."""


class SealedConversationStore:
    """A ConversationStore whose personal text is sealed at rest (see the module docstring)."""

    def __init__(self, inner: ConversationStore, keyring: Keyring) -> None:
        self._inner = inner
        self.keyring = keyring

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
        title = await self.keyring.seal(
            owner.tenant_id, owner.user_id, request.user_message_id, request.title
        )
        reservation = await self._inner.begin_turn(dataclasses.replace(request, title=title))
        branch = reservation.branch
        if branch is not None:
            branch = tuple([await self._branch_message(owner, m) for m in branch])
        return dataclasses.replace(
            reservation,
            user_text=await self._open(owner, reservation.user_text, reservation.user_message_id),
            branch=branch,
        )

    async def write_messages(self, messages: Sequence[Message]) -> int:
        return await self._inner.write_messages([await self._sealed(m) for m in messages])

    async def submit_feedback(self, owner: Owner, feedback: Feedback) -> datetime:
        comment = await self.keyring.seal(
            owner.tenant_id, owner.user_id, feedback.message_id, feedback.comment
        )
        return await self._inner.submit_feedback(
            owner, dataclasses.replace(feedback, comment=comment)
        )

    async def change_handoff(
        self, owner: Owner, conversation_id: str, change: HandoffChange
    ) -> HandoffState:
        # The reason a user gives when asking for a person is their own text.
        reason = await self.keyring.seal(
            owner.tenant_id, owner.user_id, conversation_id, change.reason
        )
        state = await self._inner.change_handoff(
            owner, conversation_id, dataclasses.replace(change, reason=reason)
        )
        return await self._handoff(state)

    async def promote_variant(self, promotion: Promotion) -> ChangeRecord:
        # The reason is an operator's note on a deployment, with no owner whose key could
        # seal it: stored in clear on purpose (docs/variants.md).
        return await self._inner.promote_variant(promotion)

    async def rollback_variant(self, actor: str, reason: str) -> ChangeRecord:
        # As promote_variant: an operator's reason, stored in clear on purpose.
        return await self._inner.rollback_variant(actor, reason)

    # Reads.

    async def get_handoff(self, owner: Owner, conversation_id: str) -> HandoffState:
        return await self._handoff(await self._inner.get_handoff(owner, conversation_id))

    async def tenant_handoff(self, tenant_id: str, conversation_id: str) -> HandoffState:
        return await self._handoff(await self._inner.tenant_handoff(tenant_id, conversation_id))

    async def list_handoffs(self, tenant_id: str, **kwargs: Any) -> HandoffPage:
        page = await self._inner.list_handoffs(tenant_id, **kwargs)
        return dataclasses.replace(
            page, handoffs=tuple([await self._handoff(h) for h in page.handoffs])
        )

    async def get_turn(
        self, owner: Owner, user_message_id: str, *, assistant_message_id: str = ""
    ) -> Turn:
        turn = await self._inner.get_turn(
            owner, user_message_id, assistant_message_id=assistant_message_id
        )
        return await self._opened_turn(turn)

    async def list_conversations(self, owner: Owner, **kwargs: Any) -> ConversationPage:
        page = await self._inner.list_conversations(owner, **kwargs)
        return dataclasses.replace(
            page, conversations=tuple([await self._conversation(c) for c in page.conversations])
        )

    async def get_conversation(
        self, owner: Owner, conversation_id: str, **kwargs: Any
    ) -> ConversationHistory:
        history = await self._inner.get_conversation(owner, conversation_id, **kwargs)
        return dataclasses.replace(
            history,
            conversation=await self._conversation(history.conversation),
            messages=tuple([await self._message(m) for m in history.messages]),
        )

    async def iter_messages(self, after: str | None, limit: int) -> list[Message]:
        return [await self._message(m) for m in await self._inner.iter_messages(after, limit)]

    async def messages_by_id(self, owner: Owner, message_ids: Sequence[str]) -> dict[str, Message]:
        # The branches of feedback datasets (docs/datasets.md).
        found = await cast(TreeQueries, self._inner).messages_by_id(owner, message_ids)
        return {message_id: await self._message(m) for message_id, m in found.items()}

    async def tree_skeleton(self, owner: Owner, conversation_id: str) -> TreeSkeleton:
        # The shape of a branch for feedback datasets; it carries the conversation's title.
        skeleton = await cast(TreeQueries, self._inner).tree_skeleton(owner, conversation_id)
        return dataclasses.replace(
            skeleton, conversation=await self._conversation(skeleton.conversation)
        )

    async def user_message_facts(self, owner: Owner, **kwargs: Any) -> list[MessageFacts]:
        # The export's feedback comments (docs/privacy.md, "Export").
        return [
            await self._facts(owner, facts)
            for facts in await self._inner.user_message_facts(owner, **kwargs)
        ]

    async def get_answer(self, owner: Owner, assistant_message_id: str) -> Answer:
        answer = await self._inner.get_answer(owner, assistant_message_id)
        turn = await self._opened_turn(answer.turn)
        stored = turn.assistant_message
        ends = valid_delta_ends(answer.delta_ends, stored.text) if stored is not None else ()
        return dataclasses.replace(answer, turn=turn, delta_ends=ends)

    async def get_conversation_tree(
        self, owner: Owner, conversation_id: str, **kwargs: Any
    ) -> ConversationTreePage:
        page = await self._inner.get_conversation_tree(owner, conversation_id, **kwargs)
        return dataclasses.replace(
            page,
            conversation=await self._conversation(page.conversation),
            messages=tuple([await self._placed(p) for p in page.messages]),
        )

    async def set_active_branch(
        self, owner: Owner, conversation_id: str, message_id: str
    ) -> Conversation:
        conversation = await self._inner.set_active_branch(owner, conversation_id, message_id)
        return await self._conversation(conversation)

    # Sealing and opening.

    async def _sealed(self, message: Message) -> Message:
        if is_sealed(message.text):
            return message  # sealed by the Agent or the Gateway before the log
        owner = message.owner
        text = await self.keyring.seal(
            owner.tenant_id, owner.user_id, message.message_id, message.text
        )
        return message if text is message.text else dataclasses.replace(message, text=text)

    async def _open(self, owner: Owner, value: str, record_id: str | None) -> str:
        return await self.keyring.open_or_erased(owner.tenant_id, owner.user_id, value, record_id)

    async def _message(self, message: Message) -> Message:
        text = await self._open(message.owner, message.text, message.message_id)
        return message if text is message.text else dataclasses.replace(message, text=text)

    async def _facts(self, owner: Owner, facts: MessageFacts) -> MessageFacts:
        feedback = facts.feedback
        if feedback is None:
            return facts
        comment = await self._open(owner, feedback.comment, facts.message_id)
        if comment is feedback.comment:
            return facts
        return dataclasses.replace(facts, feedback=dataclasses.replace(feedback, comment=comment))

    async def _placed(self, placed: PlacedMessage) -> PlacedMessage:
        return dataclasses.replace(placed, message=await self._message(placed.message))

    async def _conversation(self, conversation: Conversation) -> Conversation:
        # A title is sealed by BeginTurn, or is the first message's sealed text when the
        # conversation was created from the log: its record id is not the conversation's.
        title = await self._open(conversation.owner, conversation.title, None)
        if title is conversation.title:
            return conversation
        return dataclasses.replace(conversation, title=derived_title(title))

    async def _handoff(self, state: HandoffState) -> HandoffState:
        reason = await self._open(state.owner, state.reason, state.conversation_id)
        return state if reason is state.reason else dataclasses.replace(state, reason=reason)

    async def _opened_turn(self, turn: Turn) -> Turn:
        user, assistant = turn.user_message, turn.assistant_message
        return dataclasses.replace(
            turn,
            user_message=None if user is None else await self._message(user),
            assistant_message=None if assistant is None else await self._message(assistant),
        )

    async def _branch_message(self, owner: Owner, message: BranchMessage) -> BranchMessage:
        if message.text is None:
            return message
        text = await self._open(owner, message.text, message.message_id)
        return dataclasses.replace(message, text=text)


def sealed_store(inner: ConversationStore, keyring: Keyring) -> ConversationStore:
    """`inner` with its personal text sealed at rest, typed as the store it stands for."""
    return cast(ConversationStore, SealedConversationStore(inner, keyring))
