"""The message log from Agent to Persistence: one Kafka-shaped interface and its implementations."""

from chatplane.log.base import (
    ConsumedRecord,
    Headers,
    LogRecord,
    MessageLog,
    MessageLogConsumer,
    MessageLogProducer,
)
from chatplane.log.postgres import PostgresMessageLog

__all__ = [
    "ConsumedRecord",
    "Headers",
    "LogRecord",
    "MessageLog",
    "MessageLogConsumer",
    "MessageLogProducer",
    "PostgresMessageLog",
]
