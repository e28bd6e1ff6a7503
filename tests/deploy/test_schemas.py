"""Every rendered resource validates: core Kubernetes resources against the OpenAPI schemas of a
pinned Kubernetes version (kubernetes-validate, strict: unknown fields are errors), Istio
resources against the CRD schemas of a pinned Istio version (istio.io/api), made strict the
same way."""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.manifests import KUBERNETES_VERSION, OVERLAYS, Doc, is_istio, render, tools

Schema = dict[str, Any]


def strict(schema: Schema) -> Schema:
    """The schema with unknown fields rejected wherever Kubernetes would prune them (an object
    with declared properties and no `x-kubernetes-preserve-unknown-fields`)."""
    schema = dict(schema)
    for key in ("properties", "patternProperties", "definitions"):
        if key in schema:
            schema[key] = {name: strict(sub) for name, sub in schema[key].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            schema[key] = strict(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            schema[key] = [strict(sub) for sub in schema[key]]
    if (
        schema.get("type") == "object"
        and "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    return schema


@cache
def istio_schemas() -> dict[tuple[str, str], Schema]:
    """(apiVersion, kind) → strict schema of every served version of every Istio CRD."""
    schemas = {}
    with tools().istio_crds.open() as crds:
        for crd in yaml.safe_load_all(crds):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served"):
                    schema = strict(version["schema"]["openAPIV3Schema"])
                    schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def istio_errors(doc: Doc) -> list[str]:
    """Why an Istio resource does not match its CRD schema (empty: it does)."""
    key = (doc["apiVersion"], doc["kind"])
    if key not in istio_schemas():
        return [f"{key} is not served by the pinned Istio CRDs"]
    body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
    validator = jsonschema.Draft7Validator(istio_schemas()[key])
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(body)]
    if not doc.get("metadata", {}).get("name"):
        errors.append("metadata.name missing")
    return errors


def kubernetes_errors(doc: Doc) -> list[str]:
    """Why a core resource does not match the pinned Kubernetes schema (empty: it does)."""
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{'/'.join(map(str, error.path))}: {error.message}"]
    return []


def errors_of(doc: Doc) -> list[str]:
    return istio_errors(doc) if is_istio(doc) else kubernetes_errors(doc)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_resource_matches_its_pinned_schema(overlay: str) -> None:
    docs = render(overlay)
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "Service", "AuthorizationPolicy", "PeerAuthentication"} <= kinds
    failures = {
        f"{doc['kind']}/{doc['metadata'].get('namespace', '')}/{doc['metadata']['name']}": errs
        for doc in docs
        if (errs := errors_of(doc))
    }
    assert failures == {}


def mutated(kind: str, change: Any) -> Doc:
    """A rendered resource of the kind, changed by `change(doc)`."""
    doc = copy.deepcopy(next(d for d in render("prod") if d["kind"] == kind))
    change(doc)
    return doc


@pytest.mark.parametrize(
    ("kind", "change"),
    [
        # A typo in a hardening field would otherwise be dropped silently by the API server.
        (
            "Deployment",
            lambda d: d["spec"]["template"]["spec"]["containers"][0]["securityContext"].update(
                readOnlyRootFileSystem=True
            ),
        ),
        ("Service", lambda d: d["spec"]["ports"][0].update(port="fifty")),
        ("PeerAuthentication", lambda d: d["spec"]["mtls"].update(mode="STRICTER")),
        (
            "AuthorizationPolicy",
            lambda d: d["spec"].update(rules=[{"from": [{"source": {"principal": ["x"]}}]}]),
        ),
        ("DestinationRule", lambda d: d["spec"]["trafficPolicy"]["tls"].update(mode="MUTUAL_ISH")),
        ("VirtualService", lambda d: d["spec"]["http"][0].update(timeout=30)),
    ],
)
def test_the_validators_reject_a_broken_resource(kind: str, change: Any) -> None:
    assert errors_of(mutated(kind, change)) != []
