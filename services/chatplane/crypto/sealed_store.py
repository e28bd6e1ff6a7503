"""The system of record with personal text sealed: wraps a ConversationStore so that message
text, conversation titles and feedback comments are written sealed with their owner's data
key and read back opened. Text that arrives sealed already (from the message log) is stored
as it is; text whose key was destroyed reads as ERASED_TEXT.

Only the methods that carry text are wrapped; every other attribute is the wrapped store's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

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


class SealedConversationStore:
    """A ConversationStore whose personal text is sealed at rest (see the module docstring)."""

    def __init__(self, inner: ConversationStore, keyring: Keyring) -> None:
        self._inner = inner
        self.keyring = keyring

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

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
