"""The text of an uploaded document by its media type: UTF-8 text and markdown as they are,
PDF through pypdf (text layer only: a scanned PDF without one has no text to index)."""

from __future__ import annotations

import io
import logging

import pypdf

from chatplane.common import errors
from chatplane.memory.document_header import MARKDOWN, MIME_TYPES, PDF, PLAIN_TEXT

# pypdf reports recoverable oddities of a file on its logger; they say nothing to operators.
logging.getLogger("pypdf").setLevel(logging.ERROR)


def document_text(content: bytes, mime_type: str) -> str:
    """The document's text. InvalidArgument (field `content`) when it cannot be read as
    `mime_type` or holds no text; InvalidArgument (`header.mime_type`) for another type."""
    if mime_type in (PLAIN_TEXT, MARKDOWN):
        try:
            text = content.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise errors.InvalidArgument("content", "is not UTF-8 text") from None
    elif mime_type == PDF:
        text = _pdf_text(content)
    else:
        raise errors.InvalidArgument("header.mime_type", f"must be one of {', '.join(MIME_TYPES)}")
    text = text.replace("\x00", "")
    if not text.strip():
        raise errors.InvalidArgument("content", "holds no text to index")
    return text


def _pdf_text(content: bytes) -> str:
    try:
        reader = pypdf.PdfReader(io.BytesIO(content))
        encrypted = reader.is_encrypted
        if not encrypted:
            return "\n\n".join(page.extract_text() or "" for page in reader.pages)
    except Exception as error:
        # A broken or hostile file, whatever pypdf raised: its parser's complaint (the class
        # only), never its contents.
        raise errors.InvalidArgument(
            "content", f"is not a readable PDF ({type(error).__name__})"
        ) from None
    raise errors.InvalidArgument("content", "is an encrypted PDF")
