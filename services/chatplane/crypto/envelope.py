"""The sealed text envelope: personal text encrypted with its owner's data key (AES-256-GCM),
bound to tenant, user and record id, written as one string so it fits every text column and
text field of the message log.

Shape: ``\\x1ecp1.<data key id>.<record id>.<base64url(nonce || ciphertext || tag)>``. The
record id is in clear (an id, not content) so a value can be opened where the reader does not
know it (a title copied from its conversation's first message); readers that know it check it.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SEALED_PREFIX = "\x1ecp1."
_NONCE_BYTES = 12


class SealedTextError(Exception):
    """A sealed value cannot be opened."""


class KeyDestroyed(SealedTextError):
    """The owner's data key that sealed this value was destroyed (crypto-shredding): the text
    is gone for good. Readers show the message as erased."""


class TamperedText(SealedTextError):
    """The sealed value was altered, belongs to another owner or record, or is malformed."""


@dataclass(frozen=True, slots=True)
class SealedParts:
    """A parsed envelope."""

    key_id: str
    record_id: str
    payload: bytes


def is_sealed(value: str) -> bool:
    """True when `value` has the envelope's shape (it may still fail to open)."""
    return value.startswith(SEALED_PREFIX)


def associated_data(tenant_id: str, user_id: str, record_id: str, key_id: str) -> bytes:
    """What a ciphertext is bound to: a value moved to another owner or record fails to open."""
    return "\x00".join(("chatplane/v1", tenant_id, user_id, record_id, key_id)).encode()


def seal(aead: AESGCM, key_id: str, tenant_id: str, user_id: str, record_id: str, text: str) -> str:
    """`text` sealed with the data key `aead` (named `key_id`)."""
    nonce = os.urandom(_NONCE_BYTES)
    aad = associated_data(tenant_id, user_id, record_id, key_id)
    payload = nonce + aead.encrypt(nonce, text.encode(), aad)
    encoded = base64.urlsafe_b64encode(payload).decode().rstrip("=")
    return f"{SEALED_PREFIX}{key_id}.{record_id}.{encoded}"


def parse(value: str) -> SealedParts:
    """The envelope's parts; TamperedText when it is not one."""
    if not is_sealed(value):
        raise TamperedText("not a sealed value")
    key_id, _, rest = value[len(SEALED_PREFIX) :].partition(".")
    record_id, _, encoded = rest.rpartition(".")
    if not key_id or not encoded:
        raise TamperedText("malformed sealed value")
    try:
        payload = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError) as error:
        raise TamperedText("malformed sealed value") from error
    if len(payload) < _NONCE_BYTES + 16:
        raise TamperedText("malformed sealed value")
    return SealedParts(key_id, record_id, payload)


def open_parts(aead: AESGCM, parts: SealedParts, tenant_id: str, user_id: str) -> str:
    """The text of a parsed envelope; TamperedText when it does not authenticate."""
    aad = associated_data(tenant_id, user_id, parts.record_id, parts.key_id)
    try:
        plain = aead.decrypt(parts.payload[:_NONCE_BYTES], parts.payload[_NONCE_BYTES:], aad)
    except InvalidTag as error:
        raise TamperedText("sealed value does not authenticate") from error
    return plain.decode()
