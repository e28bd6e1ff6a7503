"""The system of record's domain records (messages, conversations, turns, keys, feedback) and
the checks and stored forms the store shares; `ConversationStore` names the store itself
(postgres.py: PostgreSQL in both profiles)."""

from __future__ import annotations

import enum
import hashlib
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from chatplane.common import errors
from chatplane.common.ids import is_valid_id, new_id
from chatplane.crypto.envelope import is_sealed

if TYPE_CHECKING:  # the store imports this module: at run time, see __getattr__ below
    from chatplane.persistence.store.postgres import PostgresConversationStore

    ConversationStore = PostgresConversationStore

API_KEY_PREFIX = "cp"
"""Full API keys read `cp_<key_id>_<secret>`."""

_API_KEY_SECRET_BYTES = 32

Clock = Callable[[], datetime]
"""Returns the current time as an aware UTC datetime; injected so tests control leases."""


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
    # Assistant messages: where each streamed delta ended (code points); () when unknown.
    delta_ends: tuple[int, ...] = ()
    # The message before it on its branch ("" for a first message); None for a message
    # recorded before conversation trees (docs/conversation-tree.md).
    parent_message_id: str | None = None
    # A/B variants (assistant messages; docs/variants.md): the variant that answered ("" is
    # stored as "default") and milliseconds from the turn's start to the first token and to
    # the end (None: not measured).
    variant: str = ""
    first_token_ms: int | None = None
    duration_ms: int | None = None
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
    # The newest message of the active branch, where the tree is read ("" otherwise).
    active_message_id: str = ""


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
    # At most one of these (docs/conversation-tree.md): a new answer to this stored user
    # message, or a new user message beside it.
    regenerate_message_id: str = ""
    edit_message_id: str = ""
    # How many messages of the branch to return with an acquired turn that needs them.
    branch_limit: int = 0


@dataclass(frozen=True, slots=True)
class BranchMessage:
    """A message of the branch a new answer follows; `text` is None while it is not stored
    (its turn is still running or has just finished)."""

    message_id: str
    role: Role
    text: str | None


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
    # The parent of the turn's user message ("" for a first message).
    parent_message_id: str = ""
    # A regenerated answer: `user_message_id` is the stored user message, `user_text` its text.
    regenerate: bool = False
    user_text: str = ""
    # For an acquired turn of a conversation with branches: the branch its answer follows.
    branch: tuple[BranchMessage, ...] | None = None


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
    # An optional numeric rating, 1 (worst) to 5 (best).
    score: int | None = None


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
    # Key management (key_records.py): when a rotated or revoked key stops working, and the
    # key that replaced it by a rotation.
    expire_time: datetime | None = None
    replaced_by: str = ""


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


@dataclass(frozen=True, slots=True)
class Answer:
    """The turn an assistant message id was reserved for and, once its answer is stored (in
    `turn.assistant_message`), where that answer's streamed deltas ended (ResumeChat)."""

    turn: Turn
    delta_ends: tuple[int, ...]


class ConversationView(enum.Enum):
    """Which messages of a conversation a history read returns."""

    ACTIVE_BRANCH = "active_branch"
    TREE = "tree"


@dataclass(frozen=True, slots=True)
class BranchCursor:
    """Where a page of a branch ended: the branch is pinned by its leaf, so paging goes on
    through the same branch even if the active one changes meanwhile."""

    conversation_id: str
    leaf_message_id: str
    offset: int


@dataclass(frozen=True, slots=True)
class PlacedMessage:
    """A message with its place in the tree: its (stored) parent and its siblings' ids,
    itself included, oldest first."""

    message: Message
    parent_message_id: str
    sibling_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ConversationTreePage:
    """A conversation with a page of its branch or tree; `next_cursor` None on the last."""

    conversation: Conversation
    messages: tuple[PlacedMessage, ...]
    next_cursor: MessageCursor | BranchCursor | None


@dataclass(frozen=True, slots=True)
class MessageFacts:
    """What a user's export (docs/privacy.md, "Export") shows of one of the user's messages
    besides the message itself (never its text): for an
    answer its variant and latencies (`variant` "" for a user message), and the user's
    feedback on it with when it was given (None: none)."""

    message_id: str
    conversation_id: str
    variant: str
    first_token_ms: int | None
    duration_ms: int | None
    feedback: Feedback | None
    feedback_time: datetime | None


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


if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        """`ConversationStore`, the name the store's callers know it by: its one
        implementation (PostgreSQL), imported when first asked for, since that module
        imports this one."""
        if name == "ConversationStore":
            from chatplane.persistence.store.postgres import (  # noqa: PLC0415 (cycle)
                PostgresConversationStore,
            )

            return PostgresConversationStore
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def require_known_id(value: str, what: str) -> None:
    """An id that cannot name anything stored (not a canonical UUID) is NotFound, as an
    unknown one is: "<what> not found"."""
    if not is_valid_id(value):
        raise errors.NotFound(f"{what} not found")


def require_limit(limit: int) -> None:
    """Page sizes reaching a store are validated by the caller; anything else is a bug."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")


def require_history_request(conversation_id: str, limit: int, after: MessageCursor | None) -> None:
    """The checks every store makes before reading a page of a conversation's history."""
    require_limit(limit)
    if after is not None and after.conversation_id != conversation_id:
        raise ValueError("the cursor belongs to another conversation")
    require_known_id(conversation_id, "conversation")


def derived_title(text: str, max_chars: int = 80) -> str:
    """A title for a conversation created from its first message: the start of its text on
    one line, cut at a word boundary when it is long."""
    if is_sealed(text):  # Sealed at rest (chatplane.crypto): derived when it is read.
        return text
    line = " ".join(text.split())
    if len(line) <= max_chars:
        return line
    cut = line[:max_chars].rsplit(" ", 1)[0]
    return (cut or line[:max_chars]) + "…"
