"""The emulator's HTTP server (aiohttp): the Anthropic and OpenAI-compatible endpoints, paced
and with injected faults, plus a control API that sets rules and returns what it received.

    POST /v1/messages               Anthropic Messages (stream or not)
    POST /v1/chat/completions       OpenAI chat completions (stream or not)
    PUT  /emulator/rules            {"rules": [Rule, …]} replaces the rules
    GET  /emulator/requests         every request received, with how it ended
    POST /emulator/reset            no rules, no records, an empty prompt cache
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from chatplane.llm_emulator.behaviour import Behaviour, Rule, RuleBook
from chatplane.llm_emulator.protocols import (
    Answer,
    AnthropicMessages,
    OpenAiChat,
    PromptTokens,
    Protocol,
    estimate_tokens,
)

BEHAVIOUR_HEADER = "x-emulator-behaviour"
_ANSWER = (
    "The emulated model answers with these words, paced like a real model would "
    "stream them, so that every layer above it sees tokens arrive one at a time."
)
_WORDS = _ANSWER.split()
_PING_SECONDS = 0.5


def _texts(content: Any) -> list[str]:
    """The text of a system prompt or message content: a string, or a list of text blocks."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [str(b.get("text", "")) for b in content if isinstance(b, dict)]
    return []


def _prompt_text(body: dict[str, Any]) -> str:
    """Every text of a request's prompt (system and messages), one per line, for rules that
    match on the prompt."""
    texts = _texts(body.get("system", ""))
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            texts += _texts(message.get("content", ""))
    return "\n".join(texts)


def _api_key(request: web.Request) -> str:
    """The key sent: `x-api-key` (Anthropic's documented header) or a bearer token (what
    the SDKs send for an API key, and the OpenAI protocol)."""
    key = request.headers.get("x-api-key", "")
    return key or request.headers.get("authorization", "").removeprefix("Bearer ")


@dataclass
class RequestRecord:
    """One request as the emulator saw it; `outcome` says how its answer ended."""

    id: int
    protocol: str
    model: str
    stream: bool
    body: dict[str, Any]
    api_key: str
    retry_count: str
    fault: str
    received_at: float
    status: int = 200
    tokens_sent: int = 0
    # complete, fault, client_closed (the client went away mid-answer), or "" while running.
    outcome: str = ""
    ended_at: float = 0.0
    first_token_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Pace:
    """Default pacing and answer length."""

    first_token_seconds: float = 0.0
    tokens_per_second: float = 1000.0
    tokens: int = 24


class Emulator:
    """State of one emulator: rules, records, prompt cache."""

    def __init__(
        self, pace: Pace, *, api_key: str = "", seed: int = 0, stamp_tokens: bool = False
    ) -> None:
        self.pace = pace
        # Benchmarks: each token's text is its emission time (time.time_ns()) and a space, so
        # a client on the same machine measures each token's lag through any relay exactly.
        self.stamp_tokens = stamp_tokens
        self.rules = RuleBook(seed)
        self.records: list[RequestRecord] = []
        self._api_key = api_key
        self._cached_prefixes: set[str] = set()

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/v1/messages", self._anthropic)
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_put("/emulator/rules", self._put_rules)
        app.router.add_get("/emulator/requests", self._get_requests)
        app.router.add_post("/emulator/reset", self._reset)
        return app

    # Control API.

    async def _put_rules(self, request: web.Request) -> web.Response:
        try:
            payload = await request.json()
            rules = [Rule.model_validate(rule) for rule in payload["rules"]]
        except (ValueError, KeyError, TypeError) as error:
            return web.json_response({"error": str(error)}, status=400)
        self.rules.replace(rules)
        return web.json_response({"rules": len(rules)})

    async def _get_requests(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": [asdict(r) for r in self.records]})

    async def _reset(self, request: web.Request) -> web.Response:
        self.rules.replace([])
        self.records.clear()
        self._cached_prefixes.clear()
        return web.json_response({})

    # Model endpoints.

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        protocol = AnthropicMessages(str(body.get("model", "")))
        return await self._answer(request, body, protocol, "anthropic", _api_key(request))

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        options = body.get("stream_options") or {}
        protocol = OpenAiChat(
            str(body.get("model", "")), include_usage=bool(options.get("include_usage"))
        )
        return await self._answer(request, body, protocol, "openai", _api_key(request))

    def _behaviour(self, request: web.Request, model: str, body: dict[str, Any]) -> Behaviour:
        header = request.headers.get(BEHAVIOUR_HEADER)
        if header:
            return Behaviour.model_validate_json(header)
        return self.rules.behaviour_for(model, _prompt_text(body))

    def _prompt_tokens(self, body: dict[str, Any], protocol_name: str) -> PromptTokens:
        """Input tokens, and the prompt cache: the system blocks up to the last one marked
        `cache_control` are the cached prefix (written the first time, read afterwards)."""
        total = estimate_tokens(json.dumps(body.get("system", "")) + json.dumps(body["messages"]))
        system = body.get("system")
        if protocol_name != "anthropic" or not isinstance(system, list):
            return PromptTokens(total)
        marked = [i for i, block in enumerate(system) if block.get("cache_control")]
        if not marked:
            return PromptTokens(total)
        prefix = json.dumps(system[: marked[-1] + 1], sort_keys=True)
        prefix_tokens = min(estimate_tokens(prefix), total)
        key = hashlib.sha256(f"{body.get('model')}\n{prefix}".encode()).hexdigest()
        if key in self._cached_prefixes:
            return PromptTokens(total - prefix_tokens, cache_read_input_tokens=prefix_tokens)
        self._cached_prefixes.add(key)
        return PromptTokens(total - prefix_tokens, cache_creation_input_tokens=prefix_tokens)

    async def _answer(
        self,
        request: web.Request,
        body: dict[str, Any],
        protocol: Protocol,
        protocol_name: str,
        api_key: str,
    ) -> web.StreamResponse:
        behaviour = self._behaviour(request, protocol.model, body)
        record = RequestRecord(
            id=len(self.records) + 1,
            protocol=protocol_name,
            model=protocol.model,
            stream=bool(body.get("stream")),
            body=body,
            api_key=api_key,
            retry_count=request.headers.get("x-stainless-retry-count", ""),
            fault=behaviour.fault,
            received_at=time.time(),
        )
        self.records.append(record)
        if self._api_key and api_key != self._api_key:
            return self._http_error(record, protocol, 401, "authentication_error", "invalid key")
        if behaviour.fault in protocol.http_faults:
            status, error_type = protocol.http_faults[behaviour.fault]
            return self._http_error(
                record,
                protocol,
                status,
                behaviour.error_type or error_type,
                f"emulated {behaviour.fault}",
                retry_after=behaviour.retry_after,
            )
        words, stop_reason, stop_sequence = self._answer_words(body, behaviour)
        answer = Answer(words, self._prompt_tokens(body, protocol_name), stop_reason, stop_sequence)
        if not record.stream:
            return await self._whole(record, protocol, behaviour, answer)
        response = web.StreamResponse(
            headers={"content-type": protocol.content_type, "cache-control": "no-cache"}
        )
        try:
            await response.prepare(request)
            await self._stream(request, response, record, protocol, behaviour, answer)
            if record.outcome == "":
                record.outcome = "complete"
            if behaviour.fault != "drop":
                await response.write_eof()
        except (asyncio.CancelledError, ConnectionError):
            # aiohttp cancels the handler when the client disconnects (handler_cancellation).
            if record.outcome == "":
                record.outcome = "client_closed"
            record.ended_at = time.time()
            raise
        record.ended_at = record.ended_at or time.time()
        return response

    def _http_error(
        self,
        record: RequestRecord,
        protocol: Protocol,
        status: int,
        error_type: str,
        message: str,
        retry_after: float | None = None,
    ) -> web.Response:
        record.status = status
        record.outcome = "fault"
        record.ended_at = time.time()
        headers = {"request-id": f"req_emu_{record.id}"}
        if retry_after is not None:
            headers["retry-after"] = f"{retry_after:g}"
        return web.json_response(
            protocol.error_body(error_type, message), status=status, headers=headers
        )

    def _answer_words(
        self, body: dict[str, Any], behaviour: Behaviour
    ) -> tuple[list[str], str, str | None]:
        count = self.pace.tokens if behaviour.tokens is None else behaviour.tokens
        words = [f"{_WORDS[i % len(_WORDS)]} " for i in range(count)]
        stops = body.get("stop_sequences") or body.get("stop") or []
        if isinstance(stops, str):
            stops = [stops]
        for index, word in enumerate(words):
            for stop in stops:
                if stop and stop in word:
                    return words[:index], "stop", str(stop)
        limit = int(body.get("max_tokens") or count)
        if count > limit:
            return words[:limit], "max_tokens", None
        return words, "end", None

    def _first_token_seconds(self, behaviour: Behaviour) -> float:
        pace = behaviour.first_token_seconds
        return self.pace.first_token_seconds if pace is None else pace

    async def _whole(
        self, record: RequestRecord, protocol: Protocol, behaviour: Behaviour, answer: Answer
    ) -> web.Response:
        await asyncio.sleep(self._first_token_seconds(behaviour))
        record.outcome = "complete"
        record.tokens_sent = len(answer.words)
        record.ended_at = time.time()
        return web.json_response(protocol.whole(answer))

    async def _stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        record: RequestRecord,
        protocol: Protocol,
        behaviour: Behaviour,
        answer: Answer,
    ) -> None:
        first = self._first_token_seconds(behaviour)
        rate = behaviour.tokens_per_second or self.pace.tokens_per_second
        loop = asyncio.get_running_loop()
        start = loop.time()
        for event in protocol.start(answer.prompt):
            await response.write(event)
        mid_stream = behaviour.fault in ("error_event", "stall", "drop")
        for index, word in enumerate(answer.words):
            if mid_stream and index == behaviour.after_tokens:
                break
            # Scheduled against a fixed start, so the pace does not drift.
            delay = start + first + index / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            text = f"{time.time_ns()} " if self.stamp_tokens else word
            await response.write(protocol.token(text))
            record.tokens_sent += 1
            if index == 0:
                record.first_token_at = time.time()
        if not mid_stream:
            for event in protocol.end(answer.stop_reason, answer.stop_sequence, len(answer.words)):
                await response.write(event)
            return
        await self._fault(request, response, record, protocol, behaviour)

    async def _fault(
        self,
        request: web.Request,
        response: web.StreamResponse,
        record: RequestRecord,
        protocol: Protocol,
        behaviour: Behaviour,
    ) -> None:
        record.outcome = "fault"
        if behaviour.fault == "error_event":
            await response.write(protocol.error_event(behaviour.error_type or "overloaded_error"))
        elif behaviour.fault == "drop":
            if request.transport is not None:
                request.transport.abort()
        else:  # stall: keep the connection, send only pings, until the client goes away
            record.outcome = ""
            while True:
                await asyncio.sleep(_PING_SECONDS)
                ping = protocol.ping()
                if ping is not None:
                    await response.write(ping)
