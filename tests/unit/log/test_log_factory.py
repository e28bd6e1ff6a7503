"""open_message_log: which log each profile gets, and the one-line errors of a configuration
that names none."""

from __future__ import annotations

import pytest

from chatplane.common.errors import ConfigError
from chatplane.common.settings import Settings
from chatplane.log.factory import open_message_log
from chatplane.log.kafka import KafkaMessageLog
from chatplane.log.observed import ObservedMessageLog
from chatplane.log.postgres import PostgresMessageLog

DSN = "postgresql://chatplane@127.0.0.1:5432/chatplane"


def test_the_embedded_profile_logs_to_postgres_tables_on_the_settings_dsn() -> None:
    log = open_message_log(Settings(postgres_dsn=f"  {DSN} "))

    assert isinstance(log, ObservedMessageLog) and log.system == "postgres"
    assert isinstance(log.inner, PostgresMessageLog) and log.inner.dsn == DSN


@pytest.mark.parametrize("dsn", ["", "   "])
def test_the_embedded_profile_without_a_dsn_is_a_one_line_config_error(dsn: str) -> None:
    with pytest.raises(ConfigError, match="CHATPLANE_POSTGRES_DSN") as raised:
        open_message_log(Settings(postgres_dsn=dsn))

    assert "\n" not in str(raised.value)


def test_the_cluster_profile_logs_to_kafka() -> None:
    log = open_message_log(Settings(profile="cluster", kafka_bootstrap="127.0.0.1:9092"))

    assert isinstance(log, ObservedMessageLog) and log.system == "kafka"
    assert isinstance(log.inner, KafkaMessageLog)


def test_the_cluster_profile_without_kafka_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="CHATPLANE_KAFKA_BOOTSTRAP"):
        open_message_log(Settings(profile="cluster", kafka_bootstrap=""))
