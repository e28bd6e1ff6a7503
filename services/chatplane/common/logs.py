"""Structured JSON logging: one JSON object per line with timestamp, level, service, request
id, trace id and tenant. Message content is never passed to a logger; only ids, sizes and
timings (an integration test chats with a canary string and scans every log for it)."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

from pythonjsonlogger.json import JsonFormatter

from chatplane.common.context import principal_var, request_id_var, tenant_var
from chatplane.common.trace_context import current_trace_id


class _CallContextFilter(logging.Filter):
    """Adds the service name and the current call's request id, trace id and tenant to every
    record."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.timestamp = datetime.fromtimestamp(record.created, UTC).isoformat(
            timespec="milliseconds"
        )
        record.service = self._service
        record.request_id = request_id_var.get()
        record.trace_id = current_trace_id()
        principal = principal_var.get()
        record.tenant = principal.tenant_id if principal else tenant_var.get()
        return True


def configure_logging(service: str, level: str) -> None:
    """Route every logger to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_CallContextFilter(service))
    handler.setFormatter(
        JsonFormatter(
            "{timestamp}{levelname}{name}{message}{service}{request_id}{trace_id}{tenant}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp=False,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
