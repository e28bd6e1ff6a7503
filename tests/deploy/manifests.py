"""Rendering and reading the Kubernetes + Istio manifests of istio/: the pinned tools
(scripts/deploy-tools.sh), the overlays rendered with kustomize, and the contracts' RPC and HTTP
paths read from the committed descriptor set (gen/descriptors/chatplane.binpb)."""

from __future__ import annotations

import importlib
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[2]
ISTIO = ROOT / "istio"
OVERLAYS = ("dev", "prod")
NAMESPACE = "chatplane"
DESCRIPTORS = ROOT / "gen" / "descriptors" / "chatplane.binpb"
TOOLS = ROOT / "scripts" / "deploy-tools.sh"

# The pinned versions the manifests are validated against (docs/deploy.md).
KUBERNETES_VERSION = "1.34.0"

Doc = dict[str, Any]


@dataclass(frozen=True)
class Tools:
    """Paths of the pinned validation tools."""

    kustomize: Path
    istio_crds: Path


@cache
def tools() -> Tools:
    """Builds or finds the tools (cached in ~/.cache/chatplane)."""
    proc = subprocess.run(
        [str(TOOLS)], capture_output=True, text=True, timeout=900, check=False, cwd=ROOT
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{TOOLS.name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    paths = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return Tools(kustomize=Path(paths["kustomize"]), istio_crds=Path(paths["istio_crds"]))


@cache
def render(overlay: str) -> tuple[Doc, ...]:
    """The resources of one overlay, as `kubectl apply -k istio/overlays/<overlay>` sends them."""
    proc = subprocess.run(
        [str(tools().kustomize), "build", str(ISTIO / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"kustomize build {overlay} failed:\n{proc.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def of_kind(docs: tuple[Doc, ...], kind: str) -> list[Doc]:
    """The resources of one kind."""
    return [doc for doc in docs if doc["kind"] == kind]


def named(docs: tuple[Doc, ...], kind: str, name: str) -> Doc:
    """The one resource of a kind with this name."""
    (doc,) = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    return doc


def config_map(docs: tuple[Doc, ...], prefix: str) -> Doc:
    """The one ConfigMap whose name starts with prefix (kustomize appends a content hash)."""
    (found,) = [c for c in of_kind(docs, "ConfigMap") if c["metadata"]["name"].startswith(prefix)]
    return found


def is_istio(doc: Doc) -> bool:
    """Whether the resource is an Istio custom resource."""
    return str(doc["apiVersion"]).split("/")[0].endswith(".istio.io")


def containers(deployment: Doc) -> Iterator[Doc]:
    """Every container of a Deployment's pod template, init containers included."""
    spec = deployment["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def walk(node: object) -> Iterator[object]:
    """Every key and value, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)
    else:
        yield node


@cache
def contract() -> descriptor_pb2.FileDescriptorSet:
    """The contracts of both packages: the committed descriptor set of the public one
    (proto/chatplane/v1, what the edge loads) and the internal one's generated modules
    (proto/chatplane/internal/v1, which gen/descriptors leaves out)."""
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS.read_bytes())
    internal = ROOT / "gen" / "python" / "chatplane" / "internal" / "v1"
    for module in sorted(internal.glob("*_pb2.py")):
        loaded = importlib.import_module(f"chatplane.internal.v1.{module.stem}")
        files.file.append(
            descriptor_pb2.FileDescriptorProto.FromString(loaded.DESCRIPTOR.serialized_pb)
        )
    return files


@cache
def rpc_paths(service: str) -> frozenset[str]:
    """The gRPC paths (`/<package>.<Service>/<Rpc>`) of one service of the contract."""
    return frozenset(
        f"/{file.package}.{svc.name}/{method.name}"
        for file in contract().file
        for svc in file.service
        if svc.name == service
        for method in svc.method
    )


@cache
def http_routes(service: str) -> frozenset[tuple[str, str]]:
    """(method, path pattern) of the service's google.api.http annotations, with each
    `{variable}` segment written as Istio's `*` suffix wildcard."""
    routes = set()
    for file in contract().file:
        for svc in file.service:
            if svc.name != service:
                continue
            for method in svc.method:
                rule: http_pb2.HttpRule = method.options.Extensions[annotations_pb2.http]
                verb = rule.WhichOneof("pattern")
                if verb is None:
                    continue
                template = getattr(rule, verb)
                pattern = re.sub(r"/\{[^}]+\}.*$", "/*", template)
                routes.add((verb.upper(), pattern))
    return frozenset(routes)
