"""The LLM emulator as the real SDKs see it: the Anthropic event sequence and usage (with the
prompt cache), its error bodies and retry-after, the OpenAI chunks with the usage chunk, and
what it records of requests and closed connections."""

from __future__ import annotations

import json
import time

import anthropic
import httpx2
import openai
import pytest

from chatplane.llm_emulator.process import running_emulator

SYSTEM = [{"type": "text", "text": "stable prefix", "cache_control": {"type": "ephemeral"}}]
MESSAGES = [{"role": "user", "content": "hello"}]


async def test_anthropic_stream_follows_the_published_event_sequence() -> None:
    async with running_emulator("--tokens", "3", "--api-key", "k") as emulator:
        async with (
            httpx2.AsyncClient(base_url=emulator.url) as http,
            http.stream(
                "POST",
                "/v1/messages",
                headers={"x-api-key": "k"},
                json={"model": "m", "max_tokens": 10, "stream": True, "messages": MESSAGES},
            ) as response,
        ):
            names = [
                line.removeprefix("event: ")
                async for line in response.aiter_lines()
                if line.startswith("event: ")
            ]
        assert names == [
            "message_start",
            "content_block_start",
            "ping",
            *["content_block_delta"] * 3,
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]

        client = anthropic.AsyncAnthropic(api_key="k", base_url=emulator.url, max_retries=0)
        usages = []
        for _ in range(2):
            stream = await client.messages.create(
                model="m", max_tokens=2, system=SYSTEM, messages=MESSAGES, stream=True
            )
            events = [event async for event in stream]
            start = events[0]
            assert start.type == "message_start"
            usages.append(start.message.usage)
            delta = next(e for e in events if e.type == "message_delta")
            assert delta.delta.stop_reason == "max_tokens"
            assert delta.usage.output_tokens == 2
        # The cached prefix is written by the first request and read by the second.
        assert usages[0].cache_creation_input_tokens > 0 == usages[0].cache_read_input_tokens
        assert usages[1].cache_read_input_tokens == usages[0].cache_creation_input_tokens
        wrong_key = client.with_options(api_key="wrong")
        with pytest.raises(anthropic.AuthenticationError):
            await wrong_key.messages.create(model="m", max_tokens=2, messages=MESSAGES)
        recorded = await emulator.requests()
        assert [r["outcome"] for r in recorded[1:]] == ["complete", "complete", "fault"]
        assert recorded[1]["body"]["system"] == SYSTEM
        await client.close()


async def test_anthropic_faults_as_the_sdk_sees_them() -> None:
    async with running_emulator() as emulator:
        client = anthropic.AsyncAnthropic(api_key="k", base_url=emulator.url, max_retries=2)
        # 429 with a retry-after: the SDK waits that long, then succeeds.
        await emulator.set_rules(
            [{"times": 1, "behaviour": {"fault": "rate_limit", "retry_after": 0.4}}]
        )
        began = time.monotonic()
        message = await client.messages.create(model="m", max_tokens=5, messages=MESSAGES)
        assert message.stop_reason == "max_tokens"
        assert time.monotonic() - began >= 0.4
        # 529 overloaded, shaped like the API's error body.
        await emulator.set_rules([{"behaviour": {"fault": "overloaded"}}])
        with pytest.raises(anthropic.OverloadedError) as overloaded:
            await client.with_options(max_retries=0).messages.create(
                model="m", max_tokens=5, messages=MESSAGES
            )
        assert overloaded.value.type == "overloaded_error"
        # An error event after two tokens.
        await emulator.set_rules([{"behaviour": {"fault": "error_event", "after_tokens": 2}}])
        texts = []
        with pytest.raises(anthropic.APIStatusError) as mid_stream:
            stream = await client.messages.create(
                model="m", max_tokens=5, messages=MESSAGES, stream=True
            )
            async for event in stream:
                if event.type == "content_block_delta":
                    texts.append(event.delta.text)
        assert len(texts) == 2
        assert mid_stream.value.type == "overloaded_error"
        recorded = await emulator.requests()
        assert [(r["status"], r["retry_count"]) for r in recorded[:2]] == [(429, "0"), (200, "1")]
        # A behaviour in a request header wins over the rules (for direct callers).
        await emulator.set_rules([])
        with pytest.raises(anthropic.InternalServerError):
            await client.with_options(max_retries=0).messages.create(
                model="m",
                max_tokens=5,
                messages=MESSAGES,
                extra_headers={"x-emulator-behaviour": '{"fault": "server_error"}'},
            )
        await client.close()


async def test_openai_stream_ends_with_a_usage_chunk_and_done() -> None:
    async with running_emulator("--tokens", "4") as emulator:
        async with (
            httpx2.AsyncClient(base_url=emulator.url) as http,
            http.stream(
                "POST",
                "/v1/chat/completions",
                json={
                    "model": "llama",
                    "messages": MESSAGES,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                },
            ) as response,
        ):
            lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        usage_chunk = json.loads(lines[-2].removeprefix("data: "))
        assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 4

        client = openai.AsyncOpenAI(api_key="k", base_url=f"{emulator.url}/v1", max_retries=0)
        stream = await client.chat.completions.create(
            model="llama",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert len(text.split()) == 4
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
        await client.close()
