"""The `chatplane` command: start the stack, chat with it, read history, manage API keys and
development certificates."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import NoReturn

import click
import grpc
from pydantic import ValidationError

from chatplane.cli.client import open_channel
from chatplane.common.errors import EXIT_CONFIG_ERROR, ConfigError
from chatplane.common.settings import Settings
from chatplane.common.settings_errors import settings_config_error
from chatplane.common.tls import CA_VAR, CERT_VAR, KEY_VAR
from chatplane.internal.v1 import identity_pb2
from chatplane.launcher import Stack, StackInfo
from chatplane.launcher.certificates import DEFAULT_DAYS, CertificateDirError, init_certificates
from chatplane.launcher.development_key import DEV_ROLES, DEV_TENANT
from chatplane.launcher.stack import EDGE
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import admin_resources_pb2

DEFAULT_DATA_DIR = ".chatplane"
DEFAULT_TLS_DIR = "tls"


class CommandGroup(click.Group):
    """The command group whose every command ends on a configuration that cannot work (a
    ConfigError: certificate files, a service of `up` refusing its settings; settings that do
    not validate) with one line on stderr and exit status 2, no traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ConfigError as error:
            _refuse(ctx, error)
        except ValidationError as error:
            if error.title != Settings.__name__:
                raise
            _refuse(ctx, settings_config_error(error))


def _refuse(ctx: click.Context, error: ConfigError) -> NoReturn:
    command = f"chatplane {ctx.invoked_subcommand}" if ctx.invoked_subcommand else "chatplane"
    click.echo(f"{command}: {error.one_line()}", err=True)
    ctx.exit(EXIT_CONFIG_ERROR)


@click.group(cls=CommandGroup)
@click.option(
    "--data-dir",
    envvar="CHATPLANE_DATA_DIR",
    default=DEFAULT_DATA_DIR,
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Data directory of the stack (embedded profile).",
)
@click.pass_context
def cli(ctx: click.Context, data_dir: Path) -> None:
    """chatplane: a production chatbot backend."""
    ctx.obj = data_dir


def engines_env(state_dir: Path) -> dict[str, str]:
    """The connection settings of the engines `make infra-up` started (engines.json)."""
    try:
        state = json.loads((state_dir / "engines.json").read_text())["engines"]
    except (OSError, ValueError, KeyError):
        raise click.ClickException(
            f"no running engines found in {state_dir}: start them with `make infra-up`"
        ) from None
    env: dict[str, str] = {}
    for engine in state.values():
        env.update(engine["env"])
    return env


@cli.command()
@click.option("--port", default=50051, show_default=True, help="Gateway port (0: any free port).")
@click.option(
    "--profile",
    type=click.Choice(["embedded", "cluster"]),
    default="embedded",
    show_default=True,
    help="embedded: no servers needed; cluster: Kafka, PostgreSQL, OpenSearch (make infra-up).",
)
@click.option(
    "--engines-state-dir",
    envvar="CHATPLANE_ENGINES_STATE_DIR",
    default=str(Path.home() / ".cache" / "chatplane" / "run"),
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where `make infra-up` recorded the engines (cluster profile).",
)
@click.option(
    "--tls/--no-tls",
    envvar="CHATPLANE_UP_TLS",
    show_envvar=True,
    default=False,
    help="Mutual TLS between all services and for clients (certificates from --tls-dir, "
    "created when absent).",
)
@click.option(
    "--tls-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Certificate directory of `chatplane certs init` (default: <data dir>/tls).",
)
@click.option(
    "--edge-port",
    default=8080,
    show_default=True,
    help="Envoy's port for HTTP (REST/JSON + SSE), gRPC-Web and gRPC (0: any free port).",
)
@click.option(
    "--edge/--no-edge", default=True, show_default=True, help="Start Envoy in front of the Gateway."
)
@click.pass_obj
def up(
    data_dir: Path,
    port: int,
    profile: str,
    engines_state_dir: Path,
    tls: bool,
    tls_dir: Path | None,
    edge_port: int,
    edge: bool,
) -> None:
    """Start the four services (and Envoy) and wait until Ctrl-C."""
    env = dict(os.environ, CHATPLANE_PROFILE=profile)
    if profile == "cluster":
        env.update(engines_env(engines_state_dir))
    inherited = [v for v in (CERT_VAR, KEY_VAR, CA_VAR) if env.get(v)]
    if inherited and not tls:
        # They would give every service the same certificate while the launcher calls in
        # plaintext: the stack would refuse its own launcher.
        raise click.ClickException(
            f"{', '.join(inherited)} set: use `chatplane up --tls` (one certificate per service "
            "from --tls-dir) or unset them"
        )
    certificates = None
    if tls:
        if edge:
            # Envoy's upstream to the Gateway is plaintext (docs/security.md).
            click.echo("note: Envoy is not started with --tls (docs/security.md)")
            edge = False
        certificates = tls_dir or data_dir / DEFAULT_TLS_DIR
        created = _init_certificates(certificates, days=DEFAULT_DAYS, hosts=(), force=False)
        if created:
            click.echo(f"created development certificates in {certificates}")
    asyncio.run(_up(data_dir, port, profile, env, certificates, edge_port if edge else None))


async def _up(
    data_dir: Path,
    port: int,
    profile: str,
    env: dict[str, str],
    tls_dir: Path | None,
    edge_port: int | None,
) -> None:
    ports = {"gateway": port, "agent": 0, "memory": 0, "persistence": 0, EDGE: edge_port or 0}
    # The web chat is served through the edge (same origin as the API), so only with it.
    stack = Stack(
        data_dir=data_dir,
        ports=ports,
        env=env,
        tls_dir=tls_dir,
        edge=edge_port is not None,
        web=edge_port is not None,
    )
    transport = "mutual TLS" if tls_dir else "plaintext"
    click.echo(f"starting chatplane ({profile} profile, {transport}, data in {stack.data_dir}) …")
    info = await stack.start()
    key = await stack.development_key()
    model = stack.services["agent"].ready_event.get("model", "?")
    click.echo("")
    click.secho(
        f"chatplane is ready: gRPC on {info.address('gateway')} (model: {model})",
        fg="green",
        bold=True,
    )
    click.echo(f"  development API key: {key}")
    roles = ", ".join(DEV_ROLES)
    click.echo(f"    (tenant {DEV_TENANT}, roles {roles}: every README command; docs/security.md)")
    client_tls = info.client_tls()
    if client_tls is not None:
        click.echo(f"  mutual TLS: CA {client_tls.ca}, client certificate {client_tls.cert}")
    if EDGE in info.ports:
        edge_url = f"http://{info.address(EDGE)}"
        click.echo(f"  Envoy (HTTP):           {edge_url}  REST/JSON + SSE, gRPC-Web, gRPC")
        click.echo(f"  web chat (browser):     {edge_url}/  (sign in with the key above)")
        click.echo(
            f"  SSE with curl:          curl -N -H 'authorization: Bearer {key}' "
            f"-H 'content-type: application/json' "
            f'-d \'{{"text":"hello"}}\' {edge_url}/v1/chat'
        )
    click.echo("  chat in the terminal:   .venv/bin/chatplane chat")
    click.echo('  one question:           .venv/bin/chatplane chat -m "hello"')
    click.echo(f"  logs (JSON lines):      {stack.data_dir / 'logs'}/")
    if stack.postgres is not None:
        where = f"127.0.0.1:{stack.postgres.port}, data in {stack.postgres.pgdata}"
        click.echo(f"  PostgreSQL (store):     {where}")
    for name in info.ports:
        if info.metrics_url(name):
            click.echo(f"  metrics ({name + '):':13} {info.metrics_url(name)}")
    click.echo("  live summary:           .venv/bin/chatplane status")
    click.echo("  stop:                   Ctrl-C")
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    exited = asyncio.ensure_future(
        asyncio.wait(
            [asyncio.ensure_future(s.process.wait()) for s in stack.services.values()],
            return_when=asyncio.FIRST_COMPLETED,
        )
    )
    await asyncio.wait(
        [asyncio.ensure_future(stopping.wait()), exited], return_when="FIRST_COMPLETED"
    )
    if not stopping.is_set():
        crashed = [s.name for s in stack.services.values() if s.process.returncode is not None]
        click.secho(f"service(s) exited: {', '.join(crashed)}; stopping the stack", fg="red")
    click.echo("stopping …")
    codes = await stack.stop()
    click.echo("stopped: " + ", ".join(f"{n}={c}" for n, c in codes.items()))


@cli.group()
def keys() -> None:
    """Manage API keys."""


@keys.command("create")
@click.option("--tenant", required=True, help="Tenant id.")
@click.option("--user", required=True, help="User id within the tenant.")
@click.option("--label", default="", help="A label to recognise the key by.")
@click.option(
    "--role",
    "roles",
    multiple=True,
    type=click.Choice(["chat", "operator", "admin"]),
    help="A role of the key (repeat for several; default: chat).",
)
@click.pass_obj
def keys_create(data_dir: Path, tenant: str, user: str, label: str, roles: tuple[str, ...]) -> None:
    """Create an API key for a user and print it (shown once)."""
    info = StackInfo.load(data_dir)
    if info is None or "persistence" not in info.ports:
        raise click.ClickException(
            f"no running stack found in {data_dir}; start it with `make run`"
        )

    async def create() -> str:
        async with open_channel(info.address("persistence"), info.client_tls()) as channel:
            response = await PersistenceClient(channel).identity.CreateApiKey(
                identity_pb2.CreateApiKeyRequest(
                    owner=admin_resources_pb2.Owner(tenant_id=tenant, user_id=user),
                    label=label,
                    roles=roles,
                    actor=cli_actor(),
                ),
                timeout=10,
            )
        return response.api_key

    try:
        click.echo(asyncio.run(create()))
    except grpc.aio.AioRpcError as error:
        raise click.ClickException(f"{error.code().name}: {error.details()}") from None


@cli.group()
def certs() -> None:
    """Development certificates for mutual TLS."""


@certs.command("init")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to write them (default: <data dir>/tls).",
)
@click.option(
    "--days", default=DEFAULT_DAYS, show_default=True, type=click.IntRange(min=1), help="Validity."
)
@click.option(
    "--host",
    "hosts",
    multiple=True,
    metavar="NAME",
    help="Another DNS name or IP address of the services (repeatable).",
)
@click.option("--force", is_flag=True, help="Start over: a new CA and new certificates.")
@click.pass_obj
def certs_init(
    data_dir: Path, directory: Path | None, days: int, hosts: tuple[str, ...], force: bool
) -> None:
    """Create a development CA and a certificate per service plus `client` (for the CLI and
    tests). Existing files are kept unless --force."""
    directory = directory or data_dir / DEFAULT_TLS_DIR
    created = _init_certificates(directory, days=days, hosts=hosts, force=force)
    click.echo(
        f"created {len(created)} files in {directory}"
        if created
        else f"certificates already in {directory} (nothing changed; --force starts over)"
    )
    for path in created:
        click.echo(f"  {path.name}")


def _init_certificates(
    directory: Path, *, days: int, hosts: tuple[str, ...], force: bool
) -> list[Path]:
    """The files created in `directory` (empty when all were there)."""
    try:
        issued = init_certificates(directory, days=days, hosts=hosts, force=force)
    except CertificateDirError as error:
        raise click.ClickException(str(error)) from None
    return [f.path for f in issued if f.created]


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli()


from chatplane.cli.chat import chat  # noqa: E402  (registered once `cli` exists)
from chatplane.cli.history import history  # noqa: E402

cli.add_command(chat)
cli.add_command(history)
from chatplane.cli.memory import memory  # noqa: E402

cli.add_command(memory)
from chatplane.cli.status import status  # noqa: E402

cli.add_command(status)
from chatplane.cli.documents import documents, ingest  # noqa: E402

cli.add_command(ingest)
cli.add_command(documents)
from chatplane.cli.quota import quota  # noqa: E402

cli.add_command(quota)
from chatplane.cli.report import report  # noqa: E402

cli.add_command(report)
from chatplane.cli.audit import audit  # noqa: E402
from chatplane.cli.keys_admin import cli_actor, keys_list, keys_revoke, keys_rotate  # noqa: E402

cli.add_command(audit)
keys.add_command(keys_list)
keys.add_command(keys_rotate)
keys.add_command(keys_revoke)
from chatplane.cli.dataset import dataset  # noqa: E402  (feedback datasets, docs/datasets.md)

cli.add_command(dataset)
from chatplane.cli.export import export  # noqa: E402

cli.add_command(export)
from chatplane.cli.variants import variants  # noqa: E402  (the variant registry)

cli.add_command(variants)
from chatplane.cli.evaluate import evaluate  # noqa: E402  (the evaluation harness)

cli.add_command(evaluate)
from chatplane.cli.erasure import erase, retention  # noqa: E402

cli.add_command(erase)
cli.add_command(retention)
