"""How the CLI finds the Gateway and its credentials: flags, then `CHATPLANE_*` variables,
then the running stack's files in the data dir (stack.json, dev-api-key, the client
certificate of a stack on mutual TLS)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import click
import grpc

from chatplane.common.tls import TlsConfigError, TlsFiles, client_channel
from chatplane.launcher.development_key import DEV_KEY_FILE
from chatplane.launcher.stack import StackInfo


@dataclass(frozen=True, slots=True)
class ClientTarget:
    """A Gateway address, an API key and the client certificate (None: plaintext)."""

    address: str
    api_key: str
    tls: TlsFiles | None = None

    @classmethod
    def resolve(
        cls,
        data_dir: Path,
        address: str | None,
        api_key: str | None,
        tls: TlsFiles | None = None,
    ) -> ClientTarget:
        """The target from explicit values, falling back to the stack in `data_dir`."""
        info = StackInfo.load(data_dir)
        if tls is None and info is not None and address is None:
            tls = info.client_tls()
        if address is None:
            address = info.address("gateway") if info and "gateway" in info.ports else None
        if address is None:
            raise click.ClickException(
                f"no running stack found in {data_dir}: start it with `make run`, "
                "or pass --address / set CHATPLANE_GATEWAY_ADDRESS"
            )
        if api_key is None:
            key_file = data_dir / DEV_KEY_FILE
            if not key_file.exists():
                raise click.ClickException("no API key: pass --api-key or set CHATPLANE_API_KEY")
            api_key = key_file.read_text().strip()
        return cls(address=address, api_key=api_key, tls=tls)

    def channel(self) -> grpc.aio.Channel:
        """A channel to the Gateway (mutual TLS when the target has a client certificate)."""
        return open_channel(self.address, self.tls)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying the key."""
        return (("authorization", f"Bearer {self.api_key}"),)


_Command = TypeVar("_Command", bound=Callable[..., object])


def open_channel(address: str, tls: TlsFiles | None) -> grpc.aio.Channel:
    """A channel for a CLI command; unusable certificate files are a TlsConfigError that ends
    the command (exit status 2)."""
    try:
        return client_channel(address, tls)
    except TlsConfigError as error:
        raise TlsConfigError(f"client certificate: {error}") from None


def tls_files(cert: Path | None, key: Path | None, ca: Path | None) -> TlsFiles | None:
    """The client certificate files given by flags, or None (all three or none; some is a
    TlsConfigError)."""
    return TlsFiles.of(cert, key, ca)


def tls_options(command: _Command) -> _Command:
    """`--tls-cert`, `--tls-key`, `--tls-ca`: the caller's client certificate for a Gateway on
    mutual TLS (default: the `client` certificate of the stack in the data dir, if it has one)."""
    for name, variable, text in (
        ("--tls-ca", "CHATPLANE_TLS_CA", "CA bundle that signed the Gateway's certificate."),
        ("--tls-key", "CHATPLANE_TLS_KEY", "Private key of the client certificate."),
        ("--tls-cert", "CHATPLANE_TLS_CERT", "Client certificate (mutual TLS)."),
    ):
        command = click.option(
            name,
            envvar=variable,
            show_envvar=True,
            type=click.Path(dir_okay=False, path_type=Path),
            help=text,
        )(command)
    return command


def gateway_options(command: _Command) -> _Command:
    """The `--address` and `--api-key` options (and the client certificate's `--tls-*`) of the
    commands that call the Gateway."""
    command = tls_options(command)
    command = click.option(
        "--api-key",
        envvar="CHATPLANE_API_KEY",
        show_envvar=True,
        metavar="KEY",
        help="API key (default: the stack's development key).",
    )(command)
    return click.option(
        "--address",
        envvar="CHATPLANE_GATEWAY_ADDRESS",
        show_envvar=True,
        metavar="HOST:PORT",
        help="Gateway address (default: the stack in the data dir).",
    )(command)
