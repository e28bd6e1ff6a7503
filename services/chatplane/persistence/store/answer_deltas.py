"""Where each streamed delta of a stored answer ended, kept beside the message so that
ResumeChat replays a stored answer with the sequence numbers it was streamed with
(docs/resume.md): one row per assistant message in
`answer_deltas`, the ends (code points from the start of the text) as comma-separated text."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from chatplane.crypto.envelope import is_sealed
from chatplane.persistence.store.base import Message

INSERT_POSTGRES = (
    "INSERT INTO answer_deltas (message_id, delta_ends) VALUES (%s, %s)"
    " ON CONFLICT (message_id) DO NOTHING"
)


def valid_delta_ends(ends: Sequence[int], text: str) -> tuple[int, ...]:
    """The ends when they describe `text` (ascending, the last one its length); otherwise
    none, and the answer replays as one delta. Sealed text (chatplane.crypto) is checked
    when it is read and opened."""
    if not ends or (ends[-1] != len(text) and not is_sealed(text)):
        return ()
    if any(end <= before for before, end in zip((0, *ends), ends, strict=False)):
        return ()
    return tuple(ends)


def delta_rows(messages: Iterable[Message]) -> list[tuple[str, str]]:
    """(message_id, encoded ends) for the messages that have them."""
    return [(m.message_id, ",".join(map(str, m.delta_ends))) for m in messages if m.delta_ends]


def decode(encoded: str | None) -> tuple[int, ...]:
    """The ends stored as `encoded` (None or empty: none)."""
    return tuple(int(end) for end in encoded.split(",")) if encoded else ()
