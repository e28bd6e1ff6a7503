"""A document's chunk read over REST/JSON through Envoy (the transcoded
`GET /v1/documents/{document_id}/chunks/{chunk_index}`): the whole chunk with its place, the
Gateway's statuses as HTTP codes, and nothing of another tenant's document (docs/rag.md)."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import httpx
import pytest

from chatplane.v1 import gateway_pb2, gateway_pb2_grpc
from tests.edge.edge_client import EdgeStack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="package")]

# One paragraph of over 200 characters (a citation's excerpt), then a second section.
GUIDE = (
    "# Ferry guide\n\n"
    + "The Glimmerbrook ferry crosses the fjord every hour from 06:00. " * 5
    + "The last crossing back leaves at 23:05.\n\n# Fares\n\nFares are paid on board.\n"
)


def _field(body: dict[str, Any]) -> str:
    (bad,) = [d for d in body["details"] if d["@type"].endswith("google.rpc.BadRequest")]
    return str(bad["fieldViolations"][0]["field"])


async def test_a_documents_chunk_is_read_whole_over_rest(edge_stack: EdgeStack) -> None:
    tenant = f"docs-{uuid.uuid4().hex}"
    key = await edge_stack.new_key(tenant, "alice")
    stranger = await edge_stack.new_key(f"other-{uuid.uuid4().hex}", "mallory")
    async with grpc.aio.insecure_channel(edge_stack.gateway_address) as channel:
        uploaded = await gateway_pb2_grpc.GatewayServiceStub(channel).UploadDocument(
            gateway_pb2.UploadDocumentRequest(
                header=gateway_pb2.IngestDocumentHeader(name="ferry.md", mime_type="text/markdown"),
                content=GUIDE.encode(),
            ),
            metadata=(("authorization", f"Bearer {key}"),),
            timeout=60,
        )
    document = uploaded.document
    assert document.chunk_count == 2
    path = f"/v1/documents/{document.document_id}/chunks"
    async with httpx.AsyncClient(base_url=edge_stack.url, timeout=10) as http:
        auth = {"authorization": f"Bearer {key}"}
        response = await http.get(f"{path}/0", headers=auth)
        assert response.status_code == 200, response.text
        chunk = response.json()["chunk"]
        assert chunk["documentId"] == document.document_id
        assert chunk["documentName"] == "ferry.md"
        assert (chunk["chunkIndex"], chunk["chunkCount"]) == (0, 2)
        assert len(chunk["text"]) > 200 and chunk["text"].rstrip().endswith("leaves at 23:05.")
        second = (await http.get(f"{path}/1", headers=auth)).json()["chunk"]
        assert second["chunkIndex"] == 1 and "paid on board" in second["text"]

        # A chunk the document does not have; another tenant's document: 404, never its text.
        for headers, url in (
            (auth, f"{path}/2"),
            ({"authorization": f"Bearer {stranger}"}, f"{path}/0"),
        ):
            missing = await http.get(url, headers=headers)
            assert missing.status_code == 404, missing.text
            assert missing.json()["code"] == grpc.StatusCode.NOT_FOUND.value[0]
            assert "Glimmerbrook" not in missing.text
        # Bad input: 400 naming the field.
        bad_id = await http.get("/v1/documents/not-an-id/chunks/0", headers=auth)
        assert bad_id.status_code == 400 and _field(bad_id.json()) == "document_id"
        negative = await http.get(f"{path}/-1", headers=auth)
        assert negative.status_code == 400 and _field(negative.json()) == "chunk_index"
        # No key: 401.
        assert (await http.get(f"{path}/0")).status_code == 401
