"""Human handoff in the system of record: a conversation's mode (bot or human), what changed
it, and the rules that have fired in it. Both SQL stores implement the same rules here."""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime

from chatplane.common import errors
from chatplane.persistence.store.base import Owner


class HandoffMode(enum.Enum):
    """Who answers in a conversation."""

    BOT = "bot"
    HUMAN = "human"


class HandoffTrigger(enum.Enum):
    """What made a conversation's last mode change."""

    USER = "user"
    EXPLICIT_REQUEST = "explicit_request"
    THUMBS_DOWN = "thumbs_down"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class HandoffChange:
    """A change to make: `mode` HUMAN hands over, BOT gives back. A change with a `rule`
    (its name) happens only if that rule has never fired in the conversation."""

    mode: HandoffMode
    trigger: HandoffTrigger
    actor_id: str
    reason: str = ""
    rule: str = ""


@dataclass(frozen=True, slots=True)
class HandoffState:
    """A conversation's handoff state; `changed` is True on the answer to a change that
    changed it. A conversation never handed off is BOT with no trigger and no times."""

    conversation_id: str
    owner: Owner
    mode: HandoffMode = HandoffMode.BOT
    trigger: HandoffTrigger | None = None
    reason: str = ""
    request_time: datetime | None = None
    release_time: datetime | None = None
    released_by: str = ""
    rules_fired: frozenset[str] = frozenset()
    changed: bool = False


@dataclass(frozen=True, slots=True)
class HandoffCursor:
    """Where a page of waiting conversations (longest waiting first) ended."""

    request_time: datetime
    conversation_id: str


@dataclass(frozen=True, slots=True)
class HandoffPage:
    """A page of a tenant's conversations in human mode; `next_cursor` None on the last."""

    handoffs: tuple[HandoffState, ...]
    next_cursor: HandoffCursor | None


def apply_change(current: HandoffState, change: HandoffChange, now: datetime) -> HandoffState:
    """The state after `change` (with `changed`), or `current` unchanged when the change
    is a no-op: the mode is already the one asked for, or the rule has fired before."""
    unchanged = replace(current, changed=False)
    if change.mode is current.mode or (change.rule and change.rule in current.rules_fired):
        return unchanged
    if change.mode is HandoffMode.HUMAN:
        fired = current.rules_fired | {change.rule} if change.rule else current.rules_fired
        return replace(
            current,
            mode=HandoffMode.HUMAN,
            trigger=change.trigger,
            reason=change.reason,
            request_time=now,
            rules_fired=fired,
            changed=True,
        )
    return replace(
        current,
        mode=HandoffMode.BOT,
        trigger=change.trigger,
        release_time=now,
        released_by=change.actor_id,
        changed=True,
    )


def rules_column(rules: frozenset[str]) -> str:
    """The stored form of the rules fired: sorted names separated by one space."""
    return " ".join(sorted(rules))


def stored_state(
    conversation_id: str,
    owner: Owner,
    mode: str,
    trigger: str,
    reason: str,
    request_time: datetime,
    release_time: datetime | None,
    released_by: str,
    rules_fired: str,
) -> HandoffState:
    """A state from the columns of a `handoffs` row (times already converted)."""
    return HandoffState(
        conversation_id=conversation_id,
        owner=owner,
        mode=HandoffMode(mode),
        trigger=HandoffTrigger(trigger),
        reason=reason,
        request_time=request_time,
        release_time=release_time,
        released_by=released_by,
        rules_fired=frozenset(rules_fired.split()),
    )


def require_request_time(state: HandoffState) -> datetime:
    """The request time of a stored state (every stored state has one)."""
    if state.request_time is None:
        raise errors.Unavailable("a stored handoff without a request time")
    return state.request_time
