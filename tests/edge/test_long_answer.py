"""A 3-minute answer streams through Envoy without being cut: no route timeout applies to a
stream, only the idle timeout between bytes. THIS TEST TAKES ABOUT 3 MINUTES 10 SECONDS (marked
`long`; `pytest -m "not long"` skips it)."""

from __future__ import annotations

import time

import pytest

from tests.edge.edge_client import curl_sse, running_edge_stack

# The offline answer to "hi" from a user with empty memory is 48 words; one word every 4 s
# makes it last 47 * 4 = 188 s, with a token every 4 s (far below the 120 s idle timeout).
LONG_PACE = {
    "CHATPLANE_OFFLINE_TOKENS_PER_SECOND": "0.25",
    "CHATPLANE_OFFLINE_FIRST_TOKEN_SECONDS": "0.05",
    "CHATPLANE_OFFLINE_MAX_TOKENS": "400",
}
MIN_DURATION_SECONDS = 180.0


@pytest.mark.long
@pytest.mark.integration
@pytest.mark.timeout(420)
async def test_three_minute_answer_streams_through_envoy_uncut(tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    async with running_edge_stack(tmp_path_factory.mktemp("long-answer"), LONG_PACE) as edge:
        began = time.monotonic()
        stream = await curl_sse(
            f"{edge.url}/v1/chat",
            {"text": "hi"},
            {"authorization": f"Bearer {edge.api_key}"},
            timeout=360,
        )
        elapsed = time.monotonic() - began
    assert stream.status == 200
    kinds = stream.kinds
    assert kinds[0] == "started" and kinds[-1] == "done", kinds[-3:]
    sequences = [int(e["delta"]["sequence"]) for e in stream.events if "delta" in e]
    done = stream.events[-1]["done"]
    assert done["finishReason"] == "FINISH_REASON_STOP"
    assert sequences == list(range(1, int(done["deltaCount"]) + 1))
    first_delta = stream.receipt_ns[kinds.index("delta")]
    streamed_seconds = (stream.receipt_ns[-1] - first_delta) / 1e9
    assert streamed_seconds >= MIN_DURATION_SECONDS, (streamed_seconds, elapsed)
