"""The `python -m chatplane.<service>` entry point shared by the four services: settings from
`CHATPLANE_*` environment variables overridden by `--kebab-case` flags, JSON logs, asyncio."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence

from chatplane.common.errors import ConfigError
from chatplane.common.logs import configure_logging
from chatplane.common.settings import Settings
from chatplane.common.telemetry import configure_telemetry
from chatplane.common.tls import TlsConfigError
from chatplane.common.variants_config import VariantsConfigError
from chatplane.crypto.kek import KekConfigError

# The exit status of a service that cannot start because of its configuration.
EXIT_CONFIG_ERROR = 2


def load_settings(argv: Sequence[str], prog: str) -> Settings:
    """Settings from the environment, with command-line flags taking precedence."""
    return Settings(
        _cli_parse_args=list(argv),  # type: ignore[call-arg]
        _cli_prog_name=prog,
        _cli_kebab_case=True,
    )


def run_service(service: str, run: Callable[[Settings], Awaitable[None]]) -> None:
    """Parse settings, configure logging and run the service's main coroutine."""
    settings = load_settings(sys.argv[1:], f"python -m chatplane.{service}")
    configure_logging(service, settings.log_level)
    configure_telemetry(service, settings)
    try:
        asyncio.run(run(settings))  # type: ignore[arg-type]
    except TlsConfigError as error:
        # A startup error message, not a traceback: the operator has a file to fix.
        logging.getLogger(__name__).critical(f"invalid TLS configuration: {error}")
        sys.exit(EXIT_CONFIG_ERROR)
    except VariantsConfigError as error:
        logging.getLogger(__name__).critical(f"invalid A/B variants (docs/variants.md): {error}")
        sys.exit(EXIT_CONFIG_ERROR)
    except KekConfigError as error:
        logging.getLogger(__name__).critical(
            f"invalid key-encryption key (docs/security.md): {error}"
        )
        sys.exit(EXIT_CONFIG_ERROR)
    except ConfigError as error:
        logging.getLogger(__name__).critical(str(error))
        sys.exit(EXIT_CONFIG_ERROR)
