"""The CLI's mutual-TLS options: all three client-certificate files or none (else a
configuration error: one line, exit status 2), and `up` refusing inherited CHATPLANE_TLS_*
variables that would lock the launcher out of its own stack."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from chatplane.cli.main import cli


def test_chat_needs_all_three_certificate_files(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            *("--data-dir", str(tmp_path), "chat", "--address", "127.0.0.1:1", "--api-key", "k"),
            *("--tls-cert", str(tmp_path / "client.crt"), "-m", "hi"),
        ],
    )
    assert result.exit_code == 2
    assert "CHATPLANE_TLS_KEY, CHATPLANE_TLS_CA not set" in result.stderr
    assert result.stderr.startswith("chatplane chat: ") and result.stderr.count("\n") == 1


def test_chat_names_an_unusable_client_certificate(tmp_path: Path) -> None:
    flags = [f"--tls-{part}" for part in ("cert", "key", "ca")]
    paths = [str(tmp_path / name) for name in ("c.crt", "c.key", "ca.crt")]
    result = CliRunner().invoke(
        cli,
        [
            *("--data-dir", str(tmp_path), "history", "--address", "127.0.0.1:1"),
            *("--api-key", "k"),
            *(item for pair in zip(flags, paths, strict=True) for item in pair),
        ],
    )
    assert result.exit_code == 2
    assert f"client certificate: cannot read {tmp_path / 'c.crt'}" in result.stderr
    assert result.stderr.startswith("chatplane history: invalid TLS configuration: ")
    assert "Traceback" not in result.output


def test_up_refuses_inherited_tls_variables(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["--data-dir", str(tmp_path), "up", "--port", "0"],
        env={"CHATPLANE_TLS_CERT": "/somewhere/gateway.crt"},
    )
    assert result.exit_code == 1
    assert "CHATPLANE_TLS_CERT set: use `chatplane up --tls`" in result.output
    assert not (tmp_path / "stack.json").exists()
