"""Identifiers of conversations, messages and requests: random UUIDs, as text."""

from __future__ import annotations

import uuid


def new_id() -> str:
    """A fresh random id (UUID4, canonical text form)."""
    return str(uuid.uuid4())


def is_valid_id(value: str) -> bool:
    """True when `value` is an id of the form new_id() makes."""
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False
