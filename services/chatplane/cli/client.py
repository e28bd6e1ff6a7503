"""How the CLI finds the Gateway and its credentials: flags, then `CHATPLANE_*` variables,
then the running stack's files in the data dir (stack.json, dev-api-key)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import click

from chatplane.launcher.stack import DEV_KEY_FILE, StackInfo


@dataclass(frozen=True, slots=True)
class ClientTarget:
    """A Gateway address and an API key."""

    address: str
    api_key: str

    @classmethod
    def resolve(cls, data_dir: Path, address: str | None, api_key: str | None) -> ClientTarget:
        """The target from explicit values, falling back to the stack in `data_dir`."""
        if address is None:
            info = StackInfo.load(data_dir)
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
        return cls(address=address, api_key=api_key)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying the key."""
        return (("authorization", f"Bearer {self.api_key}"),)


_Command = TypeVar("_Command", bound=Callable[..., object])


def gateway_options(command: _Command) -> _Command:
    """The `--address` and `--api-key` options of the commands that call the Gateway."""
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
