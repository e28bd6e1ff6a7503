"""`chatplane variants push|list|show|diff|promote|rollback|history`: the variant registry
(docs/registry.md) through the Gateway's RegistryService, with an admin key of a tenant in
CHATPLANE_REGISTRY_ADMIN_TENANTS."""

from __future__ import annotations

import asyncio
import difflib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click
import grpc

from chatplane.cli.chat import describe_rpc_error, error_exit
from chatplane.cli.client import ClientTarget, gateway_options, tls_files
from chatplane.v1 import registry_pb2, registry_pb2_grpc

_T = TypeVar("_T")
CALL_TIMEOUT_SECONDS = 30.0
_STAGE_NAMES = {
    registry_pb2.VARIANT_STAGE_CANDIDATE: "candidate",
    registry_pb2.VARIANT_STAGE_CANARY: "canary",
    registry_pb2.VARIANT_STAGE_PRODUCTION: "production",
}
if TYPE_CHECKING:  # the async stub exists only in the stubs' types
    Work = Callable[
        [registry_pb2_grpc.RegistryServiceAsyncStub, tuple[tuple[str, str], ...]], Awaitable[_T]
    ]


def call_registry(target: ClientTarget, work: Work[_T]) -> _T:
    """Runs `work` against the Gateway's RegistryService; an RPC error ends the command."""

    async def run() -> _T:
        async with target.channel() as channel:
            return await work(registry_pb2_grpc.RegistryServiceStub(channel), target.metadata)

    try:
        return asyncio.run(run())
    except grpc.aio.AioRpcError as error:
        error_exit(describe_rpc_error(error))


def _target(
    data_dir: Path,
    address: str | None,
    api_key: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
) -> ClientTarget:
    return ClientTarget.resolve(data_dir, address, api_key, tls_files(tls_cert, tls_key, tls_ca))


def identifier(version: registry_pb2.VariantVersion) -> str:
    """NAME@VERSION."""
    return f"{version.name}@{version.version}"


def pretty_spec(version: registry_pb2.VariantVersion) -> str:
    """The configuration as indented JSON (what `show` prints and `diff` compares)."""
    return json.dumps(json.loads(version.spec_json), indent=2, sort_keys=True, ensure_ascii=False)


def stage_text(version: registry_pb2.VariantVersion) -> str:
    """`production (80%)`, `canary (20%)`, `candidate`."""
    stage = _STAGE_NAMES.get(version.stage, "candidate")
    return stage if stage == "candidate" else f"{stage} ({version.share_percent:g}%)"


def _change_line(change: registry_pb2.VariantChange) -> str:
    when = change.change_time.ToDatetime().isoformat(timespec="seconds")
    stage = _STAGE_NAMES.get(change.stage, "?")
    source = change.from_variant or "-"
    target = change.to_variant or "-"
    share = ""
    if change.stage == registry_pb2.VARIANT_STAGE_CANARY:
        share = f" ({change.from_share_percent:g}% -> {change.to_share_percent:g}%)"
    reason = f"  {change.reason}" if change.reason else ""
    return (
        f"#{change.revision}  {when}Z  {change.actor}  {change.action} {stage}: "
        f"{source} -> {target}{share}{reason}"
    )


@click.group()
def variants() -> None:
    """The variant registry: versioned answer configurations, canary and production."""


@variants.command("push")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@gateway_options
@click.pass_obj
def variants_push(
    data_dir: Path,
    file: Path,
    address: str | None,
    api_key: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
) -> None:
    """Store FILE (YAML or JSON) as the next version of its variant."""
    spec = file.read_text(encoding="utf-8")

    async def push(
        stub: registry_pb2_grpc.RegistryServiceAsyncStub, metadata: tuple[tuple[str, str], ...]
    ) -> registry_pb2.PushVariantResponse:
        response: registry_pb2.PushVariantResponse = await stub.PushVariant(
            registry_pb2.PushVariantRequest(spec=spec),
            metadata=metadata,
            timeout=CALL_TIMEOUT_SECONDS,
        )
        return response

    response = call_registry(_target(data_dir, address, api_key, tls_cert, tls_key, tls_ca), push)
    state = "created" if response.created else "unchanged (same as the latest version)"
    click.echo(f"{identifier(response.variant)}  {state}")


@variants.command("list")
@click.option("--name", default="", help="Only this variant's versions.")
@gateway_options
@click.pass_obj
def variants_list(
    data_dir: Path,
    name: str,
    address: str | None,
    api_key: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
) -> None:
    """List stored versions with their stage."""

    async def listed(
        stub: registry_pb2_grpc.RegistryServiceAsyncStub, metadata: tuple[tuple[str, str], ...]
    ) -> registry_pb2.ListVariantsResponse:
        response: registry_pb2.ListVariantsResponse = await stub.ListVariants(
            registry_pb2.ListVariantsRequest(name=name),
            metadata=metadata,
            timeout=CALL_TIMEOUT_SECONDS,
        )
        return response

    response = call_registry(_target(data_dir, address, api_key, tls_cert, tls_key, tls_ca), listed)
    for version in response.variants:
        spec = json.loads(version.spec_json)
        model = spec.get("model", spec.get("backend", "(settings)"))
        created = version.create_time.ToDatetime().isoformat(timespec="seconds")
        click.echo(
            f"{identifier(version)}  {stage_text(version)}  {model}  {created}Z"
            f"  {version.created_by}  {version.spec_sha256[:12]}"
        )


async def _get(
    stub: registry_pb2_grpc.RegistryServiceAsyncStub,
    metadata: tuple[tuple[str, str], ...],
    variant: str,
) -> registry_pb2.VariantVersion:
    response: registry_pb2.GetVariantResponse = await stub.GetVariant(
        registry_pb2.GetVariantRequest(variant=variant),
        metadata=metadata,
        timeout=CALL_TIMEOUT_SECONDS,
    )
    return response.variant


@variants.command("show")
@click.argument("variant")
@gateway_options
@click.pass_obj
def variants_show(
    data_dir: Path,
    variant: str,
    address: str | None,
    api_key: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
) -> None:
    """Print one version (NAME@VERSION): its facts and configuration."""
    version = call_registry(
        _target(data_dir, address, api_key, tls_cert, tls_key, tls_ca),
        lambda stub, metadata: _get(stub, metadata, variant),
    )
    click.echo(f"variant: {identifier(version)}")
    click.echo(f"stage: {stage_text(version)}")
    click.echo(f"created: {version.create_time.ToDatetime().isoformat(timespec='seconds')}Z")
    click.echo(f"by: {version.created_by}")
    click.echo(f"sha256: {version.spec_sha256}")
    click.echo(pretty_spec(version))


@variants.command("diff")
@click.argument("old")
@click.argument("new")
@gateway_options
@click.pass_obj
def variants_diff(
    data_dir: Path,
    old: str,
    new: str,
    address: str | None,
    api_key: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
) -> None:
    """A unified diff of two versions' configurations (exit 0 whether or not they differ)."""

    async def both(
        stub: registry_pb2_grpc.RegistryServiceAsyncStub, metadata: tuple[tuple[str, str], ...]
    ) -> tuple[registry_pb2.VariantVersion, registry_pb2.VariantVersion]:
        return await _get(stub, metadata, old), await _get(stub, metadata, new)

    first, second = call_registry(
        _target(data_dir, address, api_key, tls_cert, tls_key, tls_ca), both
    )
    lines = difflib.unified_diff(
        pretty_spec(first).splitlines(),
        pretty_spec(second).splitlines(),
        fromfile=identifier(first),
        tofile=identifier(second),
        lineterm="",
    )
    text = "\n".join(lines)
    click.echo(text or f"{identifier(first)} and {identifier(second)} are the same configuration")


@variants.command("promote")
@click.argument("variant")
@click.option(
    "--stage",
    type=click.Choice(["canary", "production"]),
    default="production",
    show_default=True,
)
@click.option("--share", type=float, default=None, help="The canary's share of users, percent.")
@click.option("--reason", default="", help="Why (recorded with the change).")
@gateway_options
@click.pass_obj
def variants_promote(
    data_dir: Path,
    variant: str,
    stage: str,
    share: float | None,
    reason: str,
    address: str | None,
    api_key: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
) -> None:
    """Put VARIANT (NAME@VERSION) in production, or in canary with --share percent."""
    if stage == "canary" and share is None:
        raise click.UsageError("a canary needs --share (percent of users, e.g. 20)")
    if stage == "production" and share is not None:
        raise click.UsageError("--share is for --stage canary")
    request = registry_pb2.PromoteVariantRequest(
        variant=variant,
        stage=(
            registry_pb2.VARIANT_STAGE_CANARY
            if stage == "canary"
            else registry_pb2.VARIANT_STAGE_PRODUCTION
        ),
        share_percent=share or 0.0,
        reason=reason,
    )

    async def promote(
        stub: registry_pb2_grpc.RegistryServiceAsyncStub, metadata: tuple[tuple[str, str], ...]
    ) -> registry_pb2.PromoteVariantResponse:
        response: registry_pb2.PromoteVariantResponse = await stub.PromoteVariant(
            request, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS
        )
        return response

    response = call_registry(
        _target(data_dir, address, api_key, tls_cert, tls_key, tls_ca), promote
    )
    click.echo(_change_line(response.change))


@variants.command("rollback")
@click.option("--reason", default="", help="Why (recorded with the change).")
@gateway_options
@click.pass_obj
def variants_rollback(
    data_dir: Path,
    reason: str,
    address: str | None,
    api_key: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
) -> None:
    """End the canary, or (without one) restore the previous production version."""

    async def rollback(
        stub: registry_pb2_grpc.RegistryServiceAsyncStub, metadata: tuple[tuple[str, str], ...]
    ) -> registry_pb2.RollbackVariantResponse:
        response: registry_pb2.RollbackVariantResponse = await stub.RollbackVariant(
            registry_pb2.RollbackVariantRequest(reason=reason),
            metadata=metadata,
            timeout=CALL_TIMEOUT_SECONDS,
        )
        return response

    response = call_registry(
        _target(data_dir, address, api_key, tls_cert, tls_key, tls_ca), rollback
    )
    click.echo(_change_line(response.change))


@variants.command("history")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@gateway_options
@click.pass_obj
def variants_history(
    data_dir: Path,
    limit: int,
    address: str | None,
    api_key: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
) -> None:
    """The recorded deployment changes, newest first: who, when, from, to."""

    async def changes(
        stub: registry_pb2_grpc.RegistryServiceAsyncStub, metadata: tuple[tuple[str, str], ...]
    ) -> registry_pb2.ListVariantChangesResponse:
        response: registry_pb2.ListVariantChangesResponse = await stub.ListVariantChanges(
            registry_pb2.ListVariantChangesRequest(limit=limit),
            metadata=metadata,
            timeout=CALL_TIMEOUT_SECONDS,
        )
        return response

    response = call_registry(
        _target(data_dir, address, api_key, tls_cert, tls_key, tls_ca), changes
    )
    for change in response.changes:
        click.echo(_change_line(change))
