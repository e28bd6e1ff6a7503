"""The message log of the configured profile."""

from __future__ import annotations

from chatplane.common.errors import ConfigError
from chatplane.common.settings import Settings
from chatplane.common.topics import (
    HANDOFF_TOPIC,
    MEMORY_DLQ_TOPIC,
    MESSAGES_DLQ_TOPIC,
    MESSAGES_TOPIC,
)
from chatplane.log.base import MessageLog
from chatplane.log.kafka import KafkaMessageLog
from chatplane.log.observed import ObservedMessageLog
from chatplane.log.postgres import PostgresMessageLog


class LogConfigurationError(ConfigError):
    """The settings do not say where the configured profile's message log is."""


def open_message_log(settings: Settings) -> MessageLog:
    """The log on the embedded profile's PostgreSQL, or Kafka in the cluster profile."""
    if settings.profile == "cluster":
        bootstrap = settings.kafka_bootstrap.strip()
        if not bootstrap:
            raise LogConfigurationError(
                "the cluster profile logs messages to Kafka, but no bootstrap address is set:"
                " set CHATPLANE_KAFKA_BOOTSTRAP, e.g. 127.0.0.1:9092"
                " (scripts/infra/engines.py up writes it to engines.env)"
            )
        kafka = KafkaMessageLog(
            bootstrap,
            partitions=settings.kafka_topic_partitions,
            # Every topic exists from the first use of the log on, with its partition count,
            # including the dead-letter topic before its first record (for operators to watch).
            topics=(MESSAGES_TOPIC, MESSAGES_DLQ_TOPIC, MEMORY_DLQ_TOPIC, HANDOFF_TOPIC),
            # librdkafka stops retrying a record once the longest append has given up on it.
            delivery_timeout=settings.log_append_timeout_seconds,
        )
        return ObservedMessageLog(kafka, "kafka")
    return ObservedMessageLog(PostgresMessageLog(postgres_dsn(settings)), "postgres")


def postgres_dsn(settings: Settings) -> str:
    """The embedded profile's PostgreSQL DSN, which holds the message log's tables."""
    dsn = settings.postgres_dsn.strip()
    if not dsn:
        raise LogConfigurationError(
            "the embedded profile logs messages to PostgreSQL tables, but no DSN is set:"
            " set CHATPLANE_POSTGRES_DSN (chatplane up sets it for the services it starts)"
        )
    return dsn
