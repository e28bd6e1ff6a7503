"""The `python -m chatplane.<service>` entry point shared by the four services: settings from
`CHATPLANE_*` environment variables overridden by `--kebab-case` flags, JSON logs, asyncio.

A configuration that cannot work (any `ConfigError`, and settings that do not validate) ends
the process here, the one place that catches it: one line `chatplane <service>: <message>` on
stderr, the same message as a CRITICAL JSON log line (for log collectors and the launcher),
exit status 2, no traceback."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn

from pydantic import ValidationError

from chatplane.common.errors import EXIT_CONFIG_ERROR, ConfigError
from chatplane.common.logs import configure_logging
from chatplane.common.settings import Settings
from chatplane.common.settings_errors import settings_config_error
from chatplane.common.telemetry import configure_telemetry

__all__ = ["EXIT_CONFIG_ERROR", "load_settings", "run_service"]

# The level of the JSON log before the settings (and so their log level) are known.
_FALLBACK_LOG_LEVEL = "INFO"


def load_settings(argv: Sequence[str], prog: str) -> Settings:
    """Settings from the environment, with command-line flags taking precedence."""
    return Settings(
        _cli_parse_args=list(argv),  # type: ignore[call-arg]
        _cli_prog_name=prog,
        _cli_kebab_case=True,
    )


def run_service(service: str, run: Callable[[Settings], Awaitable[None]]) -> None:
    """Parse settings, configure logging and run the service's main coroutine."""
    try:
        settings = load_settings(sys.argv[1:], f"python -m chatplane.{service}")
    except ValidationError as error:
        configure_logging(service, _FALLBACK_LOG_LEVEL)
        _refuse(service, settings_config_error(error))
    configure_logging(service, settings.log_level)
    try:
        configure_telemetry(service, settings)
        asyncio.run(run(settings))  # type: ignore[arg-type]
    except ConfigError as error:
        _refuse(service, error)


def _refuse(service: str, error: ConfigError) -> NoReturn:
    """Ends a process whose configuration cannot work: the operator has something to fix,
    which a traceback would only hide."""
    message = error.one_line()
    logging.getLogger(__name__).critical(message, extra={"error": type(error).__name__})
    print(f"chatplane {service}: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_CONFIG_ERROR)
