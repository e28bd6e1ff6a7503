"""The Agent's side of the variant registry (docs/registry.md): a deployment as an experiment
(canary last, shares from the canary's percent), the settings' experiment while the registry
has none, a refused deployment keeping the last good one, the retrieval filters, and the
configuration format's checks."""

from __future__ import annotations

import grpc
import pytest

from chatplane.agent.llm.base import ContextPassage
from chatplane.agent.memory_client import Recollection
from chatplane.agent.variants import Experiment, FixedVariantSource, Variant, assign
from chatplane.agent.variants.recall_filter import filtered, recall_k
from chatplane.agent.variants.registry_source import (
    RegistryVariantSource,
    deployment_experiment,
)
from chatplane.agent.variants.router import VariantsConfigError
from chatplane.common.variant_spec import VariantSpecError, parse_identifier, parse_spec
from chatplane.internal.v1 import variant_registry_pb2
from chatplane.v1 import registry_pb2, resources_pb2


def _version(name: str, version: int, **spec: object) -> registry_pb2.VariantVersion:
    return registry_pb2.VariantVersion(
        name=name,
        version=version,
        spec_json=parse_spec(str({"name": name, **spec})).canonical_json(),
    )


def _deployment(revision: int, share: float = 0.0) -> registry_pb2.VariantDeployment:
    deployment = registry_pb2.VariantDeployment(
        revision=revision, production=_version("support", 1, temperature=0.1)
    )
    if share:
        deployment.canary.CopyFrom(_version("support", 2, retrieval_k=2))
        deployment.canary_share_percent = share
    return deployment


def test_a_deployment_is_production_then_canary_with_their_shares() -> None:
    experiment = deployment_experiment(_deployment(3, share=20), "salt")
    assert experiment is not None
    assert experiment.names == ["support@1", "support@2"]
    assert [v.weight for v in experiment.variants] == [80.0, 20.0]
    assert experiment.variants[0].temperature == 0.1
    assert experiment.variants[1].retrieval_k == 2
    # Growing the canary only moves users from production to it.
    bigger = deployment_experiment(_deployment(4, share=50), "salt")
    assert bigger is not None
    for user in map(str, range(2000)):
        if assign(experiment, "t", user).identifier == "support@2":
            assert assign(bigger, "t", user).identifier == "support@2"
    assert deployment_experiment(registry_pb2.VariantDeployment(revision=1), "s") is None


class _Persistence:
    """A Persistence stub answering from a list of deployments."""

    @property
    def registry(self) -> _Persistence:
        """Stands in for PersistenceClient: the one service it fakes is itself."""
        return self

    def __init__(self) -> None:
        self.deployment = registry_pb2.VariantDeployment()
        self.fail = False

    async def GetVariantDeployment(  # noqa: N802
        self, request: variant_registry_pb2.GetVariantDeploymentRequest, timeout: float
    ) -> variant_registry_pb2.GetVariantDeploymentResponse:
        if self.fail:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata()
            )
        return variant_registry_pb2.GetVariantDeploymentResponse(deployment=self.deployment)


async def test_the_settings_serve_until_the_registry_has_a_production_version() -> None:
    persistence = _Persistence()
    fallback = FixedVariantSource(Experiment((Variant("control"),), "s"))
    source = RegistryVariantSource(
        persistence,  # type: ignore[arg-type]
        fallback,
        salt="s",
        poll_seconds=1,
        call_timeout_seconds=1,
    )
    assert not await source.refresh()
    assert source.experiment().names == ["control"]
    persistence.deployment = _deployment(1)
    assert await source.refresh()
    assert source.experiment().names == ["support@1"]
    # Unreachable: the last deployment stays.
    persistence.fail = True
    assert not await source.refresh()
    assert source.experiment().names == ["support@1"]
    # A deployment the Agent cannot serve is refused; the last good one stays.
    persistence.fail = False
    persistence.deployment = _deployment(2, share=10)

    def refuse(variants: tuple[Variant, ...]) -> None:
        raise VariantsConfigError("no key for that backend")

    source.validate = refuse
    assert not await source.refresh()
    assert (source.revision, source.experiment().names) == (1, ["support@1"])
    source.validate = lambda _: None
    assert await source.refresh()
    assert source.experiment().names == ["support@1", "support@2"]


def _recollection() -> Recollection:
    kinds = [
        (resources_pb2.CITATION_KIND_TURN, "earlier conversation"),
        (resources_pb2.CITATION_KIND_DOCUMENT, "refunds.md"),
        (resources_pb2.CITATION_KIND_DOCUMENT, "shipping.md"),
        (resources_pb2.CITATION_KIND_DOCUMENT, "refunds.md"),
    ]
    citations = [
        resources_pb2.Citation(kind=kind, title=title, source_id=f"s{i}")
        for i, (kind, title) in enumerate(kinds)
    ]
    passages = [ContextPassage(source_id=c.source_id, title=c.title, text="x") for c in citations]
    return Recollection(history=(), passages=passages, citations=citations, degraded=False)


def test_retrieval_filters_keep_the_best_k_that_match() -> None:
    assert recall_k(4, None, None) == 4
    assert recall_k(4, ("document",), None) == 16
    assert recall_k(40, None, ("a",)) == 100
    whole = _recollection()
    assert filtered(whole, 4, None, None) is whole
    documents = filtered(whole, 2, ("document",), None)
    assert [c.source_id for c in documents.citations] == ["s1", "s2"]
    assert [p.source_id for p in documents.passages] == ["s1", "s2"]
    refunds = filtered(whole, 4, None, ("refunds.md",))
    assert [c.source_id for c in refunds.citations] == ["s0", "s1", "s3"]


@pytest.mark.parametrize(
    "text",
    [
        "name: a b",
        "name: x\ntemperature: 3",
        "name: x\nbackend: gpt",
        "name: x\nsurprise: 1",
        "name: x\nretrieval_kinds: [email]",
        "[1, 2]",
        "name: [",
        "[" * 5000,
    ],
)
def test_unusable_configurations_are_refused(text: str) -> None:
    with pytest.raises(VariantSpecError):
        parse_spec(text)


def test_identifiers_and_the_canonical_form() -> None:
    assert parse_identifier("support-v2.1@12") == ("support-v2.1", 12)
    for bad in ("support", "support@0", "support@x", "@1", "a@1@2"):
        with pytest.raises(VariantSpecError):
            parse_identifier(bad)
    yaml_spec = parse_spec("name: s\ntemperature: 0.5\nmax_tokens: 10\n")
    json_spec = parse_spec('{"max_tokens": 10, "temperature": 0.5, "name": "s"}')
    assert yaml_spec.canonical_json() == json_spec.canonical_json()
    assert yaml_spec.sha256() == json_spec.sha256()
