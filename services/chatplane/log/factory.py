"""The message log of the configured profile."""

from __future__ import annotations

from chatplane.common.settings import Settings
from chatplane.log.base import MessageLog
from chatplane.log.embedded import EmbeddedMessageLog


def open_message_log(settings: Settings) -> MessageLog:
    """The embedded SQLite log, or Kafka in the cluster profile."""
    return EmbeddedMessageLog(settings.data_path("log.db"))
