"""The user data export archive (GDPR access and portability; docs/privacy.md, "Export"):
one JSON document built while PrivacyService.ExportUserRecords and
MemoryService.ListUserMemory are read, and handed out in chunks of at most CHUNK_BYTES, so
neither the archive nor the user's records are ever held whole in memory. The Gateway
(AdminService.ExportUserData) and `chatplane export` both stream it.

The archive's shape (format "chatplane.user-export", version 1):

    {"format": "chatplane.user-export", "version": 1, "tenant_id": ..., "user_id": ...,
     "export_time": "<RFC 3339 UTC>",
     "conversations": [{..., "messages": [...]}, ...],
     "answers": [...], "feedback": [...], "memory": [...],
     "counts": {"conversations": n, "messages": n, "answers": n, "feedback": n, "memory": n}}

The keys of each object are listed in docs/privacy.md. `counts` comes last and is written
only when every section is complete: an archive without it was cut short."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from google.protobuf import timestamp_pb2

from chatplane.common.timestamps import datetime_of
from chatplane.internal.v1 import memory_pb2, memory_pb2_grpc, privacy_pb2
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import admin_resources_pb2, gateway_pb2, resources_pb2

ARCHIVE_FORMAT: Final = "chatplane.user-export"
ARCHIVE_VERSION: Final = 1
CHUNK_BYTES: Final = 64 * 1024
"""The largest chunk handed out (well under gRPC's 4 MiB message limit)."""
PAGE_SIZE: Final = 200
"""Records per store read: what one export holds in memory at most, besides one chunk."""

Json = dict[str, Any]
Timeout = Callable[[], float]
"""Seconds the next downstream call may take (from the caller's remaining time)."""


def _time(stamp: timestamp_pb2.Timestamp) -> str | None:
    if stamp.seconds == 0 and stamp.nanos == 0:
        return None
    return rfc3339(datetime_of(stamp))


def rfc3339(moment: datetime) -> str:
    """A UTC time as RFC 3339 with microseconds and a `Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _enum_word(name: str, prefix: str) -> str:
    """ROLE_USER -> "user"; the UNSPECIFIED value -> ""."""
    word = name.removeprefix(prefix).lower()
    return "" if word == "unspecified" else word


def conversation_json(conversation: resources_pb2.Conversation) -> Json:
    """A conversation's entry, without its messages."""
    return {
        "conversation_id": conversation.conversation_id,
        "title": conversation.title,
        "create_time": _time(conversation.create_time),
        "update_time": _time(conversation.update_time),
        "message_count": conversation.message_count,
        "active_message_id": conversation.active_message_id,
    }


def message_json(message: resources_pb2.Message) -> Json:
    """A message's entry."""
    return {
        "message_id": message.message_id,
        "role": _enum_word(resources_pb2.Role.Name(message.role), "ROLE_"),
        "text": message.text,
        "status": _enum_word(resources_pb2.MessageStatus.Name(message.status), "MESSAGE_STATUS_"),
        "create_time": _time(message.create_time),
        "parent_message_id": message.parent_message_id,
        "sibling_message_ids": list(message.sibling_message_ids),
        "reply_to_message_id": message.reply_to_message_id,
        "client_message_id": message.client_message_id,
        "model": message.model,
        "finish_reason": _enum_word(
            resources_pb2.FinishReason.Name(message.finish_reason), "FINISH_REASON_"
        ),
        "input_tokens": message.usage.input_tokens,
        "output_tokens": message.usage.output_tokens,
        "operator_id": message.operator_id,
    }


def answer_json(answer: privacy_pb2.ExportedAnswer) -> Json:
    """An answer's facts."""
    return {
        "message_id": answer.message_id,
        "conversation_id": answer.conversation_id,
        "variant": answer.variant,
        "first_token_ms": answer.first_token_ms if answer.HasField("first_token_ms") else None,
        "duration_ms": answer.duration_ms if answer.HasField("duration_ms") else None,
    }


def feedback_json(feedback: privacy_pb2.ExportedFeedback) -> Json:
    """A feedback entry."""
    return {
        "message_id": feedback.message_id,
        "conversation_id": feedback.conversation_id,
        "rating": _enum_word(gateway_pb2.Rating.Name(feedback.rating), "RATING_"),
        "score": feedback.score or None,
        "comment": feedback.comment,
        "create_time": _time(feedback.create_time),
    }


def memory_json(item: memory_pb2.UserMemoryItem) -> Json:
    """A remembered turn's entry."""
    return {
        "item_id": item.item_id,
        "conversation_id": item.conversation_id,
        "role": _enum_word(resources_pb2.Role.Name(item.role), "ROLE_"),
        "text": item.text,
        "create_time": rfc3339(datetime.fromtimestamp(item.create_time_unix_ms / 1000, UTC)),
    }


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class _Chunker:
    """Text in, chunks of at most CHUNK_BYTES out."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def write(self, text: str) -> list[bytes]:
        self._buffer += text.encode("utf-8")
        chunks: list[bytes] = []
        while len(self._buffer) >= CHUNK_BYTES:
            chunks.append(bytes(self._buffer[:CHUNK_BYTES]))
            del self._buffer[:CHUNK_BYTES]
        return chunks

    def rest(self) -> list[bytes]:
        chunks = [bytes(self._buffer)] if self._buffer else []
        self._buffer.clear()
        return chunks


async def archive_chunks(
    persistence: PersistenceClient,
    memory: memory_pb2_grpc.MemoryServiceAsyncStub,
    owner: admin_resources_pb2.Owner,
    *,
    export_timeout: float,
    call_timeout: Timeout,
    now: datetime | None = None,
) -> AsyncIterator[bytes]:
    """The archive of `owner`, chunk by chunk. `export_timeout` bounds the whole records
    stream from Persistence; `call_timeout` gives each memory page call its deadline."""
    out = _Chunker()
    counts = {"conversations": 0, "messages": 0, "answers": 0, "feedback": 0, "memory": 0}
    header = {
        "format": ARCHIVE_FORMAT,
        "version": ARCHIVE_VERSION,
        "tenant_id": owner.tenant_id,
        "user_id": owner.user_id,
        "export_time": rfc3339(now or datetime.now(UTC)),
    }
    for chunk in out.write(_dump(header)[:-1] + ',"conversations":['):
        yield chunk
    state = _State()
    records = persistence.privacy.ExportUserRecords(
        privacy_pb2.ExportUserRecordsRequest(owner=owner, page_size=PAGE_SIZE),
        timeout=export_timeout,
    )
    try:
        async for record in records:
            for chunk in out.write(_record_text(record, state, counts)):
                yield chunk
    finally:
        # Stopped early (the caller went away, an error): end the read in Persistence too.
        cancel = getattr(records, "cancel", None)
        if cancel is not None:
            cancel()
    text = _close(state.section, state.in_conversation)
    text += _empty_between(state.section, "memory") + ',"memory":['
    for chunk in out.write(text):
        yield chunk
    token = ""
    while True:
        page = await memory.ListUserMemory(
            memory_pb2.ListUserMemoryRequest(
                tenant_id=owner.tenant_id,
                user_id=owner.user_id,
                page_size=PAGE_SIZE,
                page_token=token,
            ),
            timeout=call_timeout(),
        )
        for item in page.items:
            text = ("" if counts["memory"] == 0 else ",") + _dump(memory_json(item))
            counts["memory"] += 1
            for chunk in out.write(text):
                yield chunk
        if not page.next_page_token:
            break
        token = page.next_page_token
    for chunk in out.write('],"counts":' + _dump(counts) + "}"):
        yield chunk
    for chunk in out.rest():
        yield chunk


@dataclass(slots=True)
class _State:
    """Where the writer is: inside "conversations" (and a conversation's "messages"), or in
    one of the flat lists that follow; whether the next entry is its list's first."""

    section: str = "conversations"
    in_conversation: bool = False
    first_in_list: bool = True


def _record_text(
    record: privacy_pb2.ExportUserRecordsResponse, state: _State, counts: dict[str, int]
) -> str:
    """The archive text of one record from Persistence (and what closes the list before)."""
    kind = record.WhichOneof("record")
    text = ""
    if kind == "conversation":
        if state.in_conversation:
            text += "]}"
        text += (
            ("" if counts["conversations"] == 0 else ",")
            + _dump(conversation_json(record.conversation))[:-1]
            + ',"messages":['
        )
        state.in_conversation, state.first_in_list = True, True
        counts["conversations"] += 1
    elif kind == "message" and state.in_conversation:
        text = ("" if state.first_in_list else ",") + _dump(message_json(record.message))
        state.first_in_list = False
        counts["messages"] += 1
    elif kind in ("answer", "feedback"):
        wanted = "answers" if kind == "answer" else "feedback"
        if state.section != wanted:
            text += _close(state.section, state.in_conversation)
            text += _empty_between(state.section, wanted) + f',"{wanted}":['
            state.section, state.in_conversation, state.first_in_list = wanted, False, True
        entry = answer_json(record.answer) if kind == "answer" else feedback_json(record.feedback)
        text += ("" if state.first_in_list else ",") + _dump(entry)
        state.first_in_list = False
        counts[wanted] += 1
    return text


_ORDER = ("conversations", "answers", "feedback", "memory")


def _empty_between(section: str, wanted: str) -> str:
    """Empty lists for the sections after `section` and before `wanted` (the stream had no
    record of them). Records arrive in _ORDER; one out of order is a bug, refused."""
    start, end = _ORDER.index(section), _ORDER.index(wanted)
    if end <= start:
        raise RuntimeError(f"export records out of order: {wanted} after {section}")
    return "".join(f',"{name}":[]' for name in _ORDER[start + 1 : end])


def _close(section: str, in_conversation: bool) -> str:
    """The text that ends `section` (and the conversation open in it)."""
    return ("]}" if section == "conversations" and in_conversation else "") + "]"
