"""MemoryService.ListUserMemory's request checks and page tokens (chatplane.memory.user_memory)."""

from __future__ import annotations

from typing import Any

import pytest

from chatplane.common import errors
from chatplane.internal.v1 import memory_pb2
from chatplane.memory.index.base import ItemKind, MemoryItem
from chatplane.memory.user_memory import list_user_memory
from chatplane.v1 import resources_pb2


class FakeMemory:
    """Five turns, item ids t0..t4, paged as the index does."""

    def __init__(self) -> None:
        self.items = [
            MemoryItem("acme", "alice", "c1", f"t{i}", ItemKind.TURN, "user", f"text {i}", i, "")
            for i in range(5)
        ]

    async def user_turns(
        self, tenant_id: str, user_id: str, *, limit: int, after: str = ""
    ) -> list[MemoryItem]:
        return [i for i in self.items if i.item_id > after][:limit]


async def _page(memory: Any, **fields: Any) -> memory_pb2.ListUserMemoryResponse:
    request = memory_pb2.ListUserMemoryRequest(tenant_id="acme", user_id="alice", **fields)
    return await list_user_memory(memory, request)


async def test_pages_follow_their_tokens_to_the_end() -> None:
    memory, token, seen = FakeMemory(), "", []
    while True:
        page = await _page(memory, page_size=2, page_token=token)
        seen += [(item.item_id, item.role) for item in page.items]
        if not page.next_page_token:
            break
        token = page.next_page_token
    assert seen == [(f"t{i}", resources_pb2.ROLE_USER) for i in range(5)]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"page_size": -1}, "page_size"),
        ({"page_size": 1001}, "page_size"),
        ({"page_token": "%%%"}, "page_token"),
        ({"page_token": "//79"}, "page_token"),  # not UTF-8
        ({"tenant_id": ""}, "tenant_id"),
        ({"user_id": "u" * 257}, "user_id"),
    ],
)
async def test_bad_requests_name_their_field(fields: dict[str, Any], field: str) -> None:
    request = memory_pb2.ListUserMemoryRequest(tenant_id="acme", user_id="alice")
    for name, value in fields.items():
        setattr(request, name, value)
    with pytest.raises(errors.InvalidArgument) as raised:
        await list_user_memory(FakeMemory(), request)  # type: ignore[arg-type]
    assert raised.value.field == field
