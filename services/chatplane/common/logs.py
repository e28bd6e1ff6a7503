"""Structured JSON logging: one JSON object per line with service, request id and tenant.
Message content is never passed to a logger; only ids, sizes and timings."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

from chatplane.common.context import principal_var, request_id_var


class _CallContextFilter(logging.Filter):
    """Adds the service name and the current call's request id and tenant to every record."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self._service
        record.request_id = request_id_var.get()
        principal = principal_var.get()
        record.tenant = principal.tenant_id if principal else ""
        return True


def configure_logging(service: str, level: str) -> None:
    """Route every logger to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_CallContextFilter(service))
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}{service}{request_id}{tenant}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            timestamp=False,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
