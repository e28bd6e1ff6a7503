"""Regenerate and switching branches over REST/JSON through Envoy (the transcoded
`google.api.http` routes): the `branch` oneof in a JSON body, the tree view as a query
parameter, and `POST /v1/conversations/{id}/active-branch` (docs/conversation-tree.md)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.edge.edge_client import EdgeStack, curl_sse

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="package")]


async def test_regenerate_and_switch_branches_over_rest(edge_stack: EdgeStack) -> None:
    auth = {"authorization": f"Bearer {edge_stack.api_key}"}
    first = await curl_sse(f"{edge_stack.url}/v1/chat", {"text": "Name a colour"}, auth)
    started = first.events[0]["started"]
    conversation_id, question = started["conversationId"], started["userMessageId"]
    again = await curl_sse(
        f"{edge_stack.url}/v1/chat",
        {"conversationId": conversation_id, "regenerateMessageId": question},
        auth,
    )
    assert again.status == 200 and again.kinds[-1] == "done"
    assert again.events[0]["started"]["userMessageId"] == question
    answers = [started["assistantMessageId"], again.events[0]["started"]["assistantMessageId"]]
    async with httpx.AsyncClient(base_url=edge_stack.url, headers=auth, timeout=10) as http:

        async def tree() -> dict[str, Any]:
            for _ in range(100):
                response = await http.get(
                    f"/v1/conversations/{conversation_id}",
                    params={"view": "CONVERSATION_VIEW_TREE"},
                )
                assert response.status_code == 200
                body: dict[str, Any] = response.json()
                if len(body.get("messages", [])) == 3:
                    return body
                await asyncio.sleep(0.05)
            raise AssertionError("the answers were not stored")

        body = await tree()
        assert [m["messageId"] for m in body["messages"]] == [question, *answers]
        assert body["messages"][2]["siblingCount"] == 2
        switched = await http.post(
            f"/v1/conversations/{conversation_id}/active-branch",
            json={"messageId": answers[0]},
        )
        assert switched.status_code == 200
        assert switched.json()["conversation"]["activeMessageId"] == answers[0]
        branch = (await http.get(f"/v1/conversations/{conversation_id}")).json()
        assert [m["messageId"] for m in branch["messages"]] == [question, answers[0]]
        assert branch["messages"][1]["siblingMessageIds"] == answers
        missing = await http.post(
            f"/v1/conversations/{conversation_id}/active-branch",
            json={"messageId": "00000000-0000-4000-8000-000000000000"},
        )
        assert missing.status_code == 404
