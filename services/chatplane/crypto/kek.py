"""Key-encryption keys (KEK): what wraps every user's data key. A small protocol so a KMS can
take the local AES-256 key's place; the ring keeps older KEKs for unwrapping during rotation."""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from chatplane.common import errors

_log = logging.getLogger(__name__)

KEY_BYTES = 32
_NONCE_BYTES = 12
DEV_KEK_FILE_NAME = "kek.key"


class KekConfigError(errors.ConfigError):
    """The configured key-encryption keys are missing or malformed (at start: exit 2)."""

    heading = "invalid key-encryption key (docs/security.md)"


class KekError(errors.Unavailable):
    """A wrapped data key cannot be unwrapped: its KEK is not configured here, or another KEK
    of the same id was configured. Calls fail UNAVAILABLE until the configuration is fixed."""


class KeyEncryptionKey(Protocol):
    """Wraps and unwraps data keys; `key_id` names it in every wrapped key's row (a KMS key's
    ARN or name would go there)."""

    @property
    def key_id(self) -> str:
        """Stable name of this KEK."""
        ...

    def wrap(self, data_key: bytes, context: bytes) -> bytes:
        """`data_key` encrypted and authenticated together with `context`."""
        ...

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        """The data key; raises KekError when `wrapped` or `context` was altered."""
        ...


class LocalKeyEncryptionKey:
    """A 256-bit AES-GCM key held in this process (from a file or an environment variable)."""

    def __init__(self, key_id: str, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise KekConfigError(f"key-encryption key {key_id!r} must be {KEY_BYTES} bytes")
        if not key_id or ":" in key_id or any(c.isspace() for c in key_id):
            raise KekConfigError("a key-encryption key id must be non-empty, without ':' or spaces")
        self._id = key_id
        self._aead = AESGCM(key)

    @property
    def key_id(self) -> str:
        return self._id

    def wrap(self, data_key: bytes, context: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, data_key, context)

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        try:
            return self._aead.decrypt(wrapped[:_NONCE_BYTES], wrapped[_NONCE_BYTES:], context)
        except (InvalidTag, ValueError) as error:
            raise KekError(
                f"key-encryption key {self._id!r} does not open this data key"
            ) from error


class KekRing:
    """The current KEK (wraps new data keys) and the previous ones (unwrap only, until every
    data key was re-wrapped by the current one)."""

    def __init__(
        self, current: KeyEncryptionKey, previous: Sequence[KeyEncryptionKey] = ()
    ) -> None:
        self.current = current
        self._by_id = {k.key_id: k for k in (*previous, current)}

    def get(self, key_id: str) -> KeyEncryptionKey:
        """The KEK named `key_id`; KekError when it is not configured."""
        try:
            return self._by_id[key_id]
        except KeyError:
            raise KekError(
                f"data key wrapped by key-encryption key {key_id!r}, which is not configured"
                " (CHATPLANE_KEK / CHATPLANE_KEK_FILE)"
            ) from None


def parse_keks(text: str, source: str) -> KekRing:
    """KEKs from lines `ID:BASE64` (32 bytes once decoded); the first line is the current KEK,
    the others are previous ones. Blank lines and lines starting with # are skipped."""
    keks: list[KeyEncryptionKey] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key_id, sep, encoded = line.partition(":")
        if not sep:
            raise KekConfigError(f"{source} line {number}: expected ID:BASE64")
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except binascii.Error as error:
            raise KekConfigError(f"{source} line {number}: the key is not base64") from error
        keks.append(LocalKeyEncryptionKey(key_id.strip(), key))
    if not keks:
        raise KekConfigError(f"{source} holds no key-encryption key")
    return KekRing(keks[0], keks[1:])


def new_kek_line(key_id: str) -> str:
    """A fresh KEK in the `ID:BASE64` form of parse_keks."""
    return f"{key_id}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"


def load_kek_ring(kek: str, kek_file: Path | None, dev_file: Path) -> KekRing:
    """The KEKs from `kek` (CHATPLANE_KEK), else `kek_file` (CHATPLANE_KEK_FILE), else the
    development KEK file `dev_file` in the data directory, created (mode 0600) when absent."""
    if kek:
        return parse_keks(kek, "CHATPLANE_KEK")
    if kek_file is not None:
        try:
            return parse_keks(kek_file.read_text(encoding="utf-8"), str(kek_file))
        except OSError as error:
            raise KekConfigError(f"cannot read CHATPLANE_KEK_FILE {kek_file}: {error}") from error
    if not dev_file.exists():
        _create_dev_kek(dev_file)
    return parse_keks(dev_file.read_text(encoding="utf-8"), str(dev_file))


def _create_dev_kek(path: Path) -> None:
    """Write a new KEK to `path` atomically: every process of a stack may race to create it,
    and all must end up with the same one (link() refuses to replace an existing file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(
                "# chatplane development key-encryption key; set CHATPLANE_KEK_FILE in"
                " production (docs/security.md)\n"
            )
            file.write(new_kek_line("dev-1") + "\n")
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
            _log.warning(
                "created a development key-encryption key; set CHATPLANE_KEK_FILE in production",
                extra={"path": str(path)},
            )
    finally:
        temporary.unlink(missing_ok=True)
