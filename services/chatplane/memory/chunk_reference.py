"""What names one chunk of a document (a document citation's `document_id` and
`chunk_index`), checked where a request for it arrives (Gateway and Memory alike). No heavy
imports: the Gateway uses it too."""

from __future__ import annotations

from chatplane.common import errors
from chatplane.common.ids import is_valid_id


def check_chunk_reference(document_id: str, chunk_index: int) -> None:
    """Raises InvalidArgument naming the field when (document id, chunk index) cannot name a
    chunk of any document: an empty or malformed id, a negative index."""
    if not document_id:
        raise errors.InvalidArgument("document_id", "required")
    if not is_valid_id(document_id):
        raise errors.InvalidArgument("document_id", "is not a document id")
    if chunk_index < 0:
        raise errors.InvalidArgument("chunk_index", "must be 0 or more")
