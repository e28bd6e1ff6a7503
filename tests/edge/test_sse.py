"""REST/JSON with Server-Sent Events through Envoy, read the way the README shows: `curl -N`."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

import pytest

from tests.edge.edge_client import EdgeStack, curl_sse

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="package")]


async def test_curl_reads_the_answer_as_sse_data_events(edge_stack: EdgeStack) -> None:
    stream = await curl_sse(
        f"{edge_stack.url}/v1/chat",
        {"text": "Hello there, what can you do?"},
        {"authorization": f"Bearer {edge_stack.api_key}"},
    )
    assert stream.status == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.other_lines == []
    kinds = stream.kinds
    assert kinds[0] == "started" and kinds[-1] == "done" and kinds[-2] == "usage"
    sequences = [int(e["delta"]["sequence"]) for e in stream.events if "delta" in e]
    assert len(sequences) > 5
    assert sequences == list(range(1, len(sequences) + 1))
    done = stream.events[-1]["done"]
    assert done["finishReason"] == "FINISH_REASON_STOP"
    assert int(done["deltaCount"]) == len(sequences)
    assert "[offline model]" in stream.text
    # Streamed as generated, not buffered until the end: the first token arrived well before
    # the last event (the answer takes about a second at 100 tokens/s).
    first_delta = kinds.index("delta")
    assert stream.receipt_ns[-1] - stream.receipt_ns[first_delta] > 0.3e9


async def test_the_readme_curl_example_streams_data_events(edge_stack: EdgeStack) -> None:
    """The README's curl command, as written, against this stack's Envoy."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = re.search(r"^(curl -N .*?)\n```", readme, re.DOTALL | re.MULTILINE)
    assert block, "README has no curl -N example"
    command = block.group(1).replace("http://127.0.0.1:8080", edge_stack.url)
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        command,
        env={**os.environ, "KEY": edge_stack.api_key},
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0
    events = [
        json.loads(line.removeprefix("data: "))
        for line in stdout.decode().splitlines()
        if line.startswith("data: ")
    ]
    assert next(iter(events[0])) == "started"
    assert next(iter(events[-1])) == "done"


async def test_curl_resumes_an_answer_after_a_sequence(edge_stack: EdgeStack) -> None:
    headers = {"authorization": f"Bearer {edge_stack.api_key}"}
    first = await curl_sse(f"{edge_stack.url}/v1/chat", {"text": "resume me"}, headers)
    message_id = first.events[0]["started"]["assistantMessageId"]
    deltas = [e["delta"] for e in first.events if "delta" in e]

    rest = await curl_sse(
        f"{edge_stack.url}/v1/messages/{message_id}/resume", {"afterSequence": 2}, headers
    )

    assert rest.status == 200 and rest.other_lines == []
    assert rest.kinds[0] == "started" and rest.events[0]["started"]["resumed"] is True
    assert rest.kinds[-2:] == ["usage", "done"]
    assert [e["delta"]["text"] for e in rest.events if "delta" in e] == [
        d["text"] for d in deltas[2:]
    ]
