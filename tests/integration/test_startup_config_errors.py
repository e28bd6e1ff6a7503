"""A service started with a configuration that cannot work ends at start-up the same way,
whatever area refuses it (settings validation, TLS, key-encryption keys, LLM backend, OIDC,
handoff rules, the store): exit status 2, one line `chatplane <service>: <message>` on stderr
beside the CRITICAL JSON log line, and no traceback."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

# Each case: the service, the bad settings, and what its one line must say.
CASES = {
    "unparsable port": (
        "gateway",
        {"CHATPLANE_GATEWAY_PORT": "abc"},
        "CHATPLANE_GATEWAY_PORT (--gateway-port): Input should be a valid integer",
    ),
    "one of three TLS files": (
        "memory",
        {"CHATPLANE_TLS_CERT": "/nowhere/memory.crt"},
        "CHATPLANE_TLS_KEY, CHATPLANE_TLS_CA not set",
    ),
    "malformed key-encryption key": (
        "persistence",
        {"CHATPLANE_KEK": "not-a-key"},
        "expected ID:BASE64",
    ),
    "backend without its address": (
        "agent",
        {"CHATPLANE_LLM_BACKEND": "openai_compatible", "CHATPLANE_LLM_MODEL": "m"},
        "CHATPLANE_OPENAI_BASE_URL",
    ),
    "incomplete OIDC": (
        "gateway",
        {"CHATPLANE_OIDC_ISSUER": "https://issuer.example"},
        "CHATPLANE_OIDC_ISSUER is set: also set",
    ),
    "handoff pattern that is no regular expression": (
        "gateway",
        {"CHATPLANE_HANDOFF_REQUEST_PATTERNS": '["(unclosed"]'},
        "CHATPLANE_HANDOFF_REQUEST_PATTERNS: '(unclosed'",
    ),
    "cluster store without a DSN": (
        "persistence",
        {"CHATPLANE_PROFILE": "cluster", "CHATPLANE_POSTGRES_DSN": ""},
        "CHATPLANE_POSTGRES_DSN",
    ),
}


async def _start(
    service: str, settings: dict[str, str], data_dir: Path, dsn: str
) -> tuple[int, str]:
    """The exit status and stderr of `python -m chatplane.<service>` (it must end by itself),
    on a real database (the store, the log and the index open before other settings fail)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHATPLANE_")}
    port = f"CHATPLANE_{service.upper()}_PORT"
    env = {
        **clean,
        "CHATPLANE_DATA_DIR": str(data_dir),
        "CHATPLANE_POSTGRES_DSN": dsn,
        port: "0",
        **settings,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        f"chatplane.{service}",
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(60):
            _, stderr = await process.communicate()
    finally:
        if process.returncode is None:  # it started after all: the assertion below fails
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stderr.decode()


@pytest.mark.parametrize("case", list(CASES))
async def test_a_configuration_that_cannot_work_ends_with_one_line_and_status_2(
    case: str, tmp_path: Path, postgres_database: str
) -> None:
    service, settings, expected = CASES[case]
    status, stderr = await _start(service, settings, tmp_path, postgres_database)
    assert status == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    plain = [line for line in lines if not line.startswith("{")]
    assert len(plain) == 1, stderr
    assert plain[0].startswith(f"chatplane {service}: ")
    assert expected in plain[0]
    # The same message for log collectors (and the launcher), as the last JSON line.
    critical = json.loads([line for line in lines if line.startswith("{")][-1])
    assert critical["level"] == "CRITICAL"
    assert f"chatplane {service}: {critical['message']}" == plain[0]


async def test_up_ends_with_one_line_and_status_2_when_a_service_refuses_its_settings(
    tmp_path: Path,
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHATPLANE_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from chatplane.cli.main import main; main()",
        *("--data-dir", str(tmp_path), "up", "--port", "0", "--no-edge"),
        env={**clean, "CHATPLANE_KEK": "not-a-key"},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(90):
            _, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 2, stderr.decode()
    lines = stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("chatplane up: persistence refused its configuration: ")
    assert "expected ID:BASE64" in lines[0]
