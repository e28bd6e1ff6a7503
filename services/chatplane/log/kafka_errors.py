"""Which Kafka errors are worth another try: the client's own retriable flag, and the metadata
errors of a topic just created or a partition whose leader just moved."""

from __future__ import annotations

from confluent_kafka import KafkaError


def retriable(error: KafkaError) -> bool:
    """Whether `error` may clear by itself within moments (retry until the call's deadline)."""
    return error.retriable() or error.code() in (
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
    )
