"""Names of the message-log topics and the current record schema version."""

from __future__ import annotations

from typing import Final

MESSAGES_TOPIC: Final = "chatplane.messages"
MESSAGES_DLQ_TOPIC: Final = "chatplane.messages.dlq"
MESSAGE_SCHEMA_VERSION: Final = 1
# Turns the Agent could not hand to MemoryService (it or its index was down): the Memory
# service consumes them and indexes them once it can. Values are `RememberRequest`s.
MEMORY_REMEMBER_TOPIC: Final = "chatplane.memory.remember"
# Human handoff (docs/handoff.md): requests, operator replies and releases, keyed by
# conversation id. Every Gateway replica tails it to reach the users watching on it.
HANDOFF_TOPIC: Final = "chatplane.handoff"
HANDOFF_SCHEMA_VERSION: Final = 1
