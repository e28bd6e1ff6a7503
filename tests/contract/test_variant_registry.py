"""Contract tests of the variant registry (docs/registry.md) on both engines: immutable,
numbered versions, promotions and rollbacks with their recorded changes, and the deployment
every Agent polls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from chatplane.common import errors
from chatplane.common.variant_spec import spec_from_data
from chatplane.persistence.store.base import ConversationStore
from chatplane.persistence.store.variant_registry import Deployment, Promotion, Stage
from tests.contract.store_fixtures import (  # noqa: F401 (fixtures are found by name)
    FakeClock,
    PostgresTarget,
    clock_fixture,
    module_database_fixture,
    postgres_dsn_fixture,
)


@pytest.fixture(name="registry")
async def registry_fixture(postgres_dsn: str, clock: FakeClock) -> AsyncIterator[ConversationStore]:
    target = PostgresTarget(postgres_dsn)
    store = await target.open(clock)
    yield store
    await store.close()


async def _push(store: ConversationStore, name: str, **fields: object) -> tuple[int, bool]:
    spec = spec_from_data({"name": name, **fields})
    record, created = await store.registry.push_variant(
        spec.name, spec.canonical_json(), spec.sha256(), "ops/user:ann"
    )
    return record.version, created


def _promote(variant: str, stage: Stage = Stage.PRODUCTION, share: float = 0.0) -> Promotion:
    return Promotion(variant, stage, share, "ops/user:ann", "test")


async def test_versions_are_numbered_immutable_and_pushes_idempotent(
    registry: ConversationStore,
) -> None:
    assert await _push(registry, "support", temperature=0.2) == (1, True)
    assert await _push(registry, "support", temperature=0.2) == (1, False)
    assert await _push(registry, "support", temperature=0.5) == (2, True)
    assert await _push(registry, "sales") == (1, True)
    # Concurrent pushes of different configurations get distinct versions, no gaps.
    versions = await asyncio.gather(
        *(_push(registry, "support", max_tokens=100 + i) for i in range(5))
    )
    assert sorted(v for v, _ in versions) == [3, 4, 5, 6, 7]
    listed = await registry.registry.list_variants()
    assert [r.identifier for r in listed] == [
        "sales@1",
        *(f"support@{v}" for v in range(1, 8)),
    ]
    first = await registry.registry.get_variant("support", 1)
    assert first.spec_json == '{"name":"support","temperature":0.2}'
    assert first.created_by == "ops/user:ann"
    assert [r.version for r in await registry.registry.list_variants("sales")] == [1]
    with pytest.raises(errors.NotFound):
        await registry.registry.get_variant("support", 99)


async def test_promotions_rollbacks_and_their_history(
    registry: ConversationStore, clock: FakeClock
) -> None:
    for temperature in (0.1, 0.2, 0.3):
        await _push(registry, "support", temperature=temperature)
    assert await registry.registry.variant_deployment() == Deployment()
    with pytest.raises(errors.FailedPrecondition):  # a canary needs a production version
        await registry.registry.promote_variant(_promote("support@2", Stage.CANARY, 20))
    with pytest.raises(errors.FailedPrecondition):  # nothing to roll back
        await registry.registry.rollback_variant("ops/user:ann", "")
    with pytest.raises(errors.NotFound):
        await registry.registry.promote_variant(_promote("support@9"))
    with pytest.raises(errors.InvalidArgument):
        await registry.registry.promote_variant(_promote("support@2", Stage.CANARY, 100))

    await registry.registry.promote_variant(_promote("support@1"))
    with pytest.raises(errors.FailedPrecondition):
        await registry.registry.promote_variant(_promote("support@1"))
    canary = await registry.registry.promote_variant(_promote("support@2", Stage.CANARY, 20))
    assert (canary.revision, canary.from_variant, canary.to_variant) == (2, "", "support@2")
    assert await registry.registry.variant_deployment() == Deployment(
        2, "support@1", "support@2", 20.0
    )

    # Rollback with a canary ends the canary; production stays.
    ended = await registry.registry.rollback_variant("ops/user:bob", "errors up")
    assert (ended.stage, ended.from_variant, ended.to_variant) == (
        Stage.CANARY,
        "support@2",
        "",
    )
    assert await registry.registry.variant_deployment() == Deployment(3, "support@1", "", 0.0)

    # Canary graduates to production; then a third version; rollbacks walk back.
    await registry.registry.promote_variant(_promote("support@2", Stage.CANARY, 50))
    await registry.registry.promote_variant(_promote("support@2"))
    assert await registry.registry.variant_deployment() == Deployment(5, "support@2", "", 0.0)
    await registry.registry.promote_variant(_promote("support@3"))
    back = await registry.registry.rollback_variant("ops/user:bob", "")
    assert (back.from_variant, back.to_variant) == ("support@3", "support@2")
    back = await registry.registry.rollback_variant("ops/user:bob", "")
    assert (back.from_variant, back.to_variant) == ("support@2", "support@1")
    with pytest.raises(errors.FailedPrecondition):
        await registry.registry.rollback_variant("ops/user:bob", "")
    assert (await registry.registry.variant_deployment()).production == "support@1"

    changes = await registry.registry.variant_changes(3)
    assert [c.revision for c in changes] == [8, 7, 6]
    assert changes[0].actor == "ops/user:bob"
    assert changes[0].action == "rollback"
    assert changes[0].change_time == clock.now
    assert [c.revision for c in await registry.registry.variant_changes(50)] == list(
        range(8, 0, -1)
    )
