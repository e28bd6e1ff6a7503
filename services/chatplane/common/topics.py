"""Names of the message-log topics and the current record schema version."""

from __future__ import annotations

from typing import Final

MESSAGES_TOPIC: Final = "chatplane.messages"
MESSAGES_DLQ_TOPIC: Final = "chatplane.messages.dlq"
MESSAGE_SCHEMA_VERSION: Final = 1
# Records of MESSAGES_TOPIC that Memory's indexer can never index (its own dead letters, apart
# from Persistence's, so that each consumer group's refusals can be replayed to it alone).
MEMORY_DLQ_TOPIC: Final = "chatplane.memory.dlq"
# Human handoff (docs/handoff.md): requests, operator replies and releases, keyed by
# conversation id. Every Gateway replica tails it to reach the users watching on it.
HANDOFF_TOPIC: Final = "chatplane.handoff"
HANDOFF_SCHEMA_VERSION: Final = 1
