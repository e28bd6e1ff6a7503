"""One user's stored facts for an export (docs/privacy.md, "Export"), read by the store's
`user_message_facts`: per message of the user, what is stored beside it (the answer's variant
and latencies, the user's feedback). Message text is not among them: messages come through
the store's own read paths."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from chatplane.persistence.store.base import Feedback

DEFAULT_PAGE = 200
MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class MessageFacts:
    """What is stored about one of the user's messages besides the message itself: for an
    answer its variant and latencies (`variant` "" for a user message), and the user's
    feedback on it with when it was given (None: none)."""

    message_id: str
    conversation_id: str
    variant: str
    first_token_ms: int | None
    duration_ms: int | None
    feedback: Feedback | None
    feedback_time: datetime | None
