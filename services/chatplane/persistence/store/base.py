"""The system of record's interface: plain domain records and the `ConversationStore` every
engine (SQLite now, PostgreSQL next) implements with the same owner scoping and idempotency."""

from __future__ import annotations

import abc
import enum
import hashlib
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from chatplane.common import errors
from chatplane.common.closing import AsyncClosable
from chatplane.common.ids import is_valid_id, new_id

if TYPE_CHECKING:
    from chatplane.persistence.store.handoff import (
        HandoffChange,
        HandoffCursor,
        HandoffPage,
        HandoffState,
    )

API_KEY_PREFIX = "cp"
"""Full API keys read `cp_<key_id>_<secret>`."""

_API_KEY_SECRET_BYTES = 32

Clock = Callable[[], datetime]
"""Returns the current time as an aware UTC datetime; injected so tests control leases."""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utc_now() -> datetime:
    """The wall clock, in UTC."""
    return datetime.now(UTC)


def to_micros(moment: datetime) -> int:
    """An aware datetime as integer microseconds since the Unix epoch (the stored form of
    times: exact, ordered, and the same in every engine)."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_micros(micros: int) -> datetime:
    """The UTC datetime `micros` microseconds after the Unix epoch."""
    return _EPOCH + timedelta(microseconds=micros)


class Role(enum.Enum):
    """Who wrote a message."""

    USER = "user"
    ASSISTANT = "assistant"


class MessageStatus(enum.Enum):
    """Whether a message's whole text is stored or it was cut short."""

    COMPLETE = "complete"
    INTERRUPTED = "interrupted"


class FinishReason(enum.Enum):
    """Why an assistant answer ended (UNSPECIFIED for user messages)."""

    UNSPECIFIED = "unspecified"
    STOP = "stop"
    MAX_TOKENS = "max_tokens"
    INTERRUPTED = "interrupted"
    ERROR = "error"


class Rating(enum.Enum):
    """A user's verdict on an answer."""

    THUMBS_UP = "thumbs_up"
    THUMBS_DOWN = "thumbs_down"


@dataclass(frozen=True, slots=True)
class Owner:
    """The tenant and user every stored object belongs to and every call acts for."""

    tenant_id: str
    user_id: str


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a conversation, as recorded in the message log and stored."""

    message_id: str
    conversation_id: str
    owner: Owner
    role: Role
    text: str
    status: MessageStatus
    create_time: datetime
    model: str = ""
    reply_to_message_id: str = ""
    finish_reason: FinishReason = FinishReason.UNSPECIFIED
    input_tokens: int = 0
    output_tokens: int = 0
    client_message_id: str = ""
    # An operator's reply (docs/handoff.md): role ASSISTANT, written by this operator.
    operator_id: str = ""


@dataclass(frozen=True, slots=True)
class Conversation:
    """A conversation's summary; `update_time` is its creation or its newest stored message's
    create time, whichever is later."""

    conversation_id: str
    owner: Owner
    title: str
    create_time: datetime
    update_time: datetime
    message_count: int


@dataclass(frozen=True, slots=True)
class TurnRequest:
    """A turn to begin: an empty `conversation_id` creates a conversation titled `title`;
    an empty `client_message_id` means the caller sent no idempotency key."""

    owner: Owner
    conversation_id: str
    client_message_id: str
    user_message_id: str
    assistant_message_id: str
    title: str
    lease: timedelta


@dataclass(frozen=True, slots=True)
class TurnReservation:
    """The turn the caller must run (`acquired`) or replay; `complete` once its assistant
    message is stored."""

    conversation_id: str
    user_message_id: str
    assistant_message_id: str
    acquired: bool
    complete: bool
    lease_expire_time: datetime


@dataclass(frozen=True, slots=True)
class Turn:
    """A reserved turn with whichever of its two messages are stored so far."""

    conversation_id: str
    user_message_id: str
    assistant_message_id: str
    lease_expire_time: datetime
    user_message: Message | None
    assistant_message: Message | None


@dataclass(frozen=True, slots=True)
class Feedback:
    """A rating of an assistant message; a later one of the same user replaces it."""

    message_id: str
    rating: Rating
    comment: str = ""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored API key: only the SHA-256 of its secret part is kept."""

    key_id: str
    owner: Owner
    label: str
    secret_sha256: bytes
    revoked: bool
    create_time: datetime
    # chatplane.common.roles names; stored as one space-separated column.
    roles: frozenset[str] = frozenset({"chat"})


@dataclass(frozen=True, slots=True)
class IssuedApiKey:
    """A key just created: `api_key` is the full key, shown to its holder once."""

    api_key: str
    record: ApiKey


@dataclass(frozen=True, slots=True)
class ConversationCursor:
    """Where a page of conversations (newest update first) ended."""

    update_time: datetime
    conversation_id: str


@dataclass(frozen=True, slots=True)
class MessageCursor:
    """Where a page of a conversation's messages (oldest first) ended; `position` is the
    store's insertion order, which breaks ties between messages created at the same time."""

    conversation_id: str
    create_time: datetime
    position: int


@dataclass(frozen=True, slots=True)
class ConversationPage:
    """A page of a user's conversations; `next_cursor` is None on the last page."""

    conversations: tuple[Conversation, ...]
    next_cursor: ConversationCursor | None


@dataclass(frozen=True, slots=True)
class ConversationHistory:
    """A conversation with a page of its messages; `next_cursor` is None on the last page."""

    conversation: Conversation
    messages: tuple[Message, ...]
    next_cursor: MessageCursor | None


class MessagesRejected(Exception):
    """`write_messages` refused the batch because some messages may never be stored (their
    conversation or message id belongs to someone else). Nothing was written; `reasons` maps
    each refused message's index in the batch to why, so the caller can dead-letter those
    and write the rest again."""

    def __init__(self, reasons: Mapping[int, str]) -> None:
        super().__init__(f"{len(reasons)} message(s) rejected")
        self.reasons = dict(reasons)


def secret_sha256(secret: str) -> bytes:
    """The stored form of an API key's secret part: SHA-256 of its ASCII text."""
    return hashlib.sha256(secret.encode("ascii")).digest()


def roles_column(roles: frozenset[str]) -> str:
    """The stored form of a key's roles: sorted names separated by one space."""
    return " ".join(sorted(roles))


def roles_from_column(value: str) -> frozenset[str]:
    """A key's roles from their stored form."""
    return frozenset(value.split())


def issue_api_key(
    owner: Owner, label: str, now: datetime, roles: frozenset[str] = frozenset({"chat"})
) -> IssuedApiKey:
    """A new key `cp_<key_id>_<secret>`: the key id is a UUID, the secret 256 random bits in
    hex (neither contains `_`, so the key splits unambiguously)."""
    key_id = new_id()
    secret = secrets.token_hex(_API_KEY_SECRET_BYTES)
    record = ApiKey(
        key_id, owner, label, secret_sha256(secret), revoked=False, create_time=now, roles=roles
    )
    return IssuedApiKey(f"{API_KEY_PREFIX}_{key_id}_{secret}", record)


class ConversationStore(AsyncClosable):
    """The system of record. Every read and write is scoped to an `Owner`: anything of
    another tenant or user, and any id that is not a valid id, is `errors.NotFound`.
    Infrastructure failures surface as `errors.Unavailable` (safe to retry)."""

    @abc.abstractmethod
    async def begin_turn(self, request: TurnRequest) -> TurnReservation:
        """Reserve the ids of a turn, creating the conversation when none is named.

        With a `client_message_id`, at most one turn exists per (owner, key) and exactly one
        of any number of concurrent callers acquires it; later calls get the same ids, not
        acquired, until the lease expires without the assistant message stored, when the next
        call acquires it again. Raises NotFound for a conversation not of the owner, and
        AlreadyExists when the user message id is already reserved by another turn.
        """

    @abc.abstractmethod
    async def get_turn(self, owner: Owner, user_message_id: str) -> Turn:
        """The turn reserved under `user_message_id` by the owner, with its stored messages."""

    @abc.abstractmethod
    async def release_turn(self, owner: Owner, user_message_id: str) -> bool:
        """Ends the lease of the owner's turn unless its assistant message is stored (then
        False): the next BeginTurn with its key acquires it at once."""

    @abc.abstractmethod
    async def list_conversations(
        self, owner: Owner, *, limit: int, after: ConversationCursor | None = None
    ) -> ConversationPage:
        """Up to `limit` of the owner's conversations, most recently updated first, starting
        after `after`. Keyset paging: conversations created or updated while paging move to
        the front, so they never shift or repeat the rest of the pages."""

    @abc.abstractmethod
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

    @abc.abstractmethod
    async def delete_conversation(self, owner: Owner, conversation_id: str) -> datetime:
        """Delete the conversation with its messages, turns and feedback; returns when.
        Messages recorded for it later are dropped by `write_messages`, so it never returns."""

    @abc.abstractmethod
    async def submit_feedback(self, owner: Owner, feedback: Feedback) -> datetime:
        """Store (or replace) the owner's feedback on one of the owner's assistant messages;
        returns when it was stored. Any other message is NotFound."""

    @abc.abstractmethod
    async def create_api_key(
        self, owner: Owner, label: str, roles: frozenset[str] = frozenset({"chat"})
    ) -> IssuedApiKey:
        """Create a key for the owner with these roles; only its secret's hash is stored."""

    @abc.abstractmethod
    async def get_api_key(self, key_id: str) -> ApiKey:
        """The stored record of a key, by its public id (the one lookup not scoped to an
        owner: it is how a caller's owner is found)."""

    @abc.abstractmethod
    async def write_messages(self, messages: Sequence[Message]) -> int:
        """Store a batch from the message log in ONE transaction; returns how many were new.

        Idempotent by message id: a message stored already (or twice in the batch) is not
        stored again. Messages of a deleted conversation are dropped. A conversation not yet
        known is created for the message's owner. When any message belongs to a conversation
        or message id of another owner, nothing is written and MessagesRejected says which.
        """

    @abc.abstractmethod
    async def iter_messages(self, after: str | None, limit: int) -> list[Message]:
        """Up to `limit` stored messages of every owner, in message id order, starting after
        the message id `after` (None: from the first); the owner is in each message.

        A keyset scan of the whole system of record for rebuilding what is derived from it
        (the memory index): call again with the last message's id until a page comes back
        short. Not scoped to an owner, so never for answering a caller. Messages stored while
        scanning are included when their id sorts after the cursor; a rebuild that must not
        miss any runs alongside the live path that also indexes new turns.
        """

    # Human handoff (docs/handoff.md; records in chatplane.persistence.store.handoff).

    @abc.abstractmethod
    async def get_handoff(self, owner: Owner, conversation_id: str) -> HandoffState:
        """The handoff state of the owner's conversation (BOT when never handed off)."""

    @abc.abstractmethod
    async def change_handoff(
        self, owner: Owner, conversation_id: str, change: HandoffChange
    ) -> HandoffState:
        """Apply `change` to the owner's conversation atomically; the answer's `changed`
        says whether anything changed (see handoff.apply_change)."""

    @abc.abstractmethod
    async def list_handoffs(
        self, tenant_id: str, *, limit: int, after: HandoffCursor | None = None
    ) -> HandoffPage:
        """Up to `limit` of the tenant's conversations in human mode, longest waiting
        first (oldest request), after `after`."""

    @abc.abstractmethod
    async def tenant_handoff(self, tenant_id: str, conversation_id: str) -> HandoffState:
        """A conversation of the tenant that was ever handed off, with its owner (for
        operators); any other is NotFound."""

    @abc.abstractmethod
    async def count_thumbs_down(self, owner: Owner, message_id: str) -> tuple[str, int]:
        """The conversation of the owner's message and its number of thumbs-down ratings."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish work under way and release the store's resources."""


def require_limit(limit: int) -> None:
    """Page sizes reaching a store are validated by the caller; anything else is a bug."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")


def require_history_request(conversation_id: str, limit: int, after: MessageCursor | None) -> None:
    """The checks every store makes before reading a page of a conversation's history."""
    require_limit(limit)
    if after is not None and after.conversation_id != conversation_id:
        raise ValueError("the cursor belongs to another conversation")
    if not is_valid_id(conversation_id):
        raise errors.NotFound("conversation not found")


def derived_title(text: str, max_chars: int = 80) -> str:
    """A title for a conversation created from its first message: the start of its text on
    one line, cut at a word boundary when it is long."""
    line = " ".join(text.split())
    if len(line) <= max_chars:
        return line
    cut = line[:max_chars].rsplit(" ", 1)[0]
    return (cut or line[:max_chars]) + "…"
