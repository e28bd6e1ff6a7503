"""Page sizes and page tokens of Persistence's list RPCs, shared by its servicers.

Page tokens are base64url of a small JSON object. They are opaque to clients and carry the
keyset position only; a token is decoded strictly, and a token of another conversation is
refused, so a forged one can at worst page through the caller's own objects."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from chatplane.common import errors
from chatplane.common.ids import is_valid_id
from chatplane.persistence.store.base import from_micros


def page_size(value: int, field: str, bounds: tuple[int, int]) -> int:
    """The page size of a request: `bounds` is (default for 0, maximum)."""
    default, maximum = bounds
    if value == 0:
        return default
    if not 1 <= value <= maximum:
        raise errors.InvalidArgument(field, f"must be between 1 and {maximum} (0 means {default})")
    return value


def encode_token(fields: dict[str, str | int]) -> str:
    """A page token of `fields` (with "k": the kind of list it pages)."""
    text = json.dumps(fields, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode("ascii")


def decode_token(token: str, field: str, kind: str) -> dict[str, Any]:
    """The fields of a page token of the list `kind`; InvalidArgument naming `field` else."""
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        fields = json.loads(raw)
    except (binascii.Error, ValueError) as error:
        raise errors.InvalidArgument(field, "not a page token of this list") from error
    if not isinstance(fields, dict) or fields.get("k") != kind:
        raise errors.InvalidArgument(field, "not a page token of this list")
    return fields


def token_int(fields: dict[str, Any], name: str, field: str) -> int:
    """A non-negative integer of a decoded token."""
    value = fields.get(name)
    if type(value) is not int or value < 0:
        raise errors.InvalidArgument(field, "not a page token of this list")
    return value


def token_time(fields: dict[str, Any], name: str, field: str) -> datetime:
    """A time (microseconds since the epoch) of a decoded token."""
    try:
        return from_micros(token_int(fields, name, field))
    except OverflowError as error:
        raise errors.InvalidArgument(field, "not a page token of this list") from error


def token_id(fields: dict[str, Any], name: str, field: str) -> str:
    """An id (a canonical UUID) of a decoded token."""
    value = fields.get(name)
    if not isinstance(value, str) or not is_valid_id(value):
        raise errors.InvalidArgument(field, "not a page token of this list")
    return value
