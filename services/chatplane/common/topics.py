"""Names of the message-log topics and the current record schema version."""

from __future__ import annotations

from typing import Final

MESSAGES_TOPIC: Final = "chatplane.messages"
MESSAGES_DLQ_TOPIC: Final = "chatplane.messages.dlq"
MESSAGE_SCHEMA_VERSION: Final = 1
