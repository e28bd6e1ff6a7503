"""MemoryService.ListUserMemory: one user's remembered turns as the index holds them, a page at
a time, for an export (docs/privacy.md, "Export"). The page token is the last item id,
base64url-encoded (opaque to callers)."""

from __future__ import annotations

import base64
import binascii

from chatplane.common import errors
from chatplane.internal.v1 import memory_pb2
from chatplane.memory.conversational_memory import ConversationalMemory
from chatplane.memory.remember_request import ROLE_NAMES
from chatplane.v1 import resources_pb2

DEFAULT_PAGE = 200
MAX_PAGE = 1000
_MAX_OWNER_CHARS = 256
_ROLES = {name: role for role, name in ROLE_NAMES.items()}


def _after(token: str) -> str:
    if not token:
        return ""
    try:
        after = base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        raise errors.InvalidArgument("page_token", "not a page token of this list") from None
    if not after:
        raise errors.InvalidArgument("page_token", "not a page token of this list")
    return after


def _token(item_id: str) -> str:
    return base64.urlsafe_b64encode(item_id.encode("utf-8")).decode("ascii")


async def list_user_memory(
    memory: ConversationalMemory, request: memory_pb2.ListUserMemoryRequest
) -> memory_pb2.ListUserMemoryResponse:
    """A page of the user's turns, in item id order."""
    for field, value in (("tenant_id", request.tenant_id), ("user_id", request.user_id)):
        if not value:
            raise errors.InvalidArgument(field, "required")
        if len(value) > _MAX_OWNER_CHARS:
            raise errors.InvalidArgument(field, f"must be at most {_MAX_OWNER_CHARS} characters")
    if request.page_size == 0:
        limit = DEFAULT_PAGE
    elif 1 <= request.page_size <= MAX_PAGE:
        limit = request.page_size
    else:
        raise errors.InvalidArgument(
            "page_size", f"must be between 1 and {MAX_PAGE} (0 means {DEFAULT_PAGE})"
        )
    items = await memory.user_turns(
        request.tenant_id, request.user_id, limit=limit, after=_after(request.page_token)
    )
    return memory_pb2.ListUserMemoryResponse(
        items=[
            memory_pb2.UserMemoryItem(
                item_id=item.item_id,
                conversation_id=item.conversation_id,
                role=_ROLES.get(item.role, resources_pb2.ROLE_UNSPECIFIED),
                text=item.text,
                create_time_unix_ms=item.created_at_ms,
            )
            for item in items
        ],
        next_page_token=_token(items[-1].item_id) if len(items) == limit else "",
    )
