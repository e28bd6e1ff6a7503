"""Settings that do not validate, as the one-line start-up message of a ConfigError: each
offending `CHATPLANE_*` variable (and its `--flag`) named with what is wrong with it (its
value is not repeated: it may be a secret)."""

from __future__ import annotations

from pydantic import ValidationError

from chatplane.common.errors import ConfigError

_ENV_PREFIX = "CHATPLANE_"


def settings_config_error(error: ValidationError) -> ConfigError:
    """The ConfigError of a settings validation error, one line naming each variable."""
    problems = []
    for detail in error.errors(include_url=False, include_input=False):
        location = [str(part) for part in detail["loc"]]
        message = str(detail["msg"])
        if not location:
            problems.append(message)
            continue
        field, *inside = location
        if field.isupper():  # a variable of its own name (ANTHROPIC_API_KEY)
            where = field
        else:  # set by its variable or by the flag of the same name
            where = f"{_ENV_PREFIX}{field.upper()} (--{field.replace('_', '-')})"
        where += "".join(f"[{part}]" for part in inside)
        problems.append(f"{where}: {message}")
    return ConfigError("; ".join(problems) or str(error).splitlines()[0])
