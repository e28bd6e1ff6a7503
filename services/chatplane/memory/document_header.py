"""The header of a document upload, checked where it arrives (Gateway and Memory alike): the
owner, a name for citations, and one of the media types ingestion reads. No heavy imports: the
Gateway uses it too."""

from __future__ import annotations

import unicodedata
from typing import Final

from chatplane.common import errors

PLAIN_TEXT: Final = "text/plain"
MARKDOWN: Final = "text/markdown"
PDF: Final = "application/pdf"
MIME_TYPES: Final = (PLAIN_TEXT, MARKDOWN, PDF)
MAX_NAME_CHARS: Final = 256


def validate_header(tenant_id: str, name: str, mime_type: str) -> None:
    """Checks an ingestion's header; InvalidArgument naming the field."""
    if not tenant_id:
        raise errors.InvalidArgument("header.tenant_id", "required")
    if not name.strip():
        raise errors.InvalidArgument("header.name", "must not be empty")
    if len(name) > MAX_NAME_CHARS:
        raise errors.InvalidArgument("header.name", f"must be at most {MAX_NAME_CHARS} characters")
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise errors.InvalidArgument("header.name", "must not contain control characters")
    if mime_type not in MIME_TYPES:
        raise errors.InvalidArgument("header.mime_type", f"must be one of {', '.join(MIME_TYPES)}")
