"""Settings that do not validate become one ConfigError line naming each variable and flag,
without repeating the value (it may be a secret)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from chatplane.common.errors import ConfigError
from chatplane.common.settings import Settings
from chatplane.common.settings_errors import settings_config_error


def _error(monkeypatch: pytest.MonkeyPatch, **variables: str) -> ConfigError:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as invalid:
        Settings()
    return settings_config_error(invalid.value)


def test_names_the_variable_and_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    error = _error(monkeypatch, CHATPLANE_GATEWAY_PORT="secret-abc")
    assert str(error).startswith("CHATPLANE_GATEWAY_PORT (--gateway-port): Input should be")
    assert "secret-abc" not in str(error)


def test_every_offending_variable_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    error = _error(monkeypatch, CHATPLANE_GATEWAY_PORT="x", CHATPLANE_DRAIN_GRACE_SECONDS="soon")
    line = error.one_line()
    assert "\n" not in line
    assert "CHATPLANE_GATEWAY_PORT (--gateway-port): " in line
    assert "; CHATPLANE_DRAIN_GRACE_SECONDS (--drain-grace-seconds): " in line
