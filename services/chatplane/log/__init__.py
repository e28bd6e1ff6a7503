"""The message log from Agent to Persistence: one Kafka-shaped interface and its implementations."""

from chatplane.log.base import (
    ConsumedRecord,
    Headers,
    LogRecord,
    MessageLog,
    MessageLogConsumer,
    MessageLogProducer,
)
from chatplane.log.embedded import EmbeddedMessageLog

__all__ = [
    "ConsumedRecord",
    "EmbeddedMessageLog",
    "Headers",
    "LogRecord",
    "MessageLog",
    "MessageLogConsumer",
    "MessageLogProducer",
]
