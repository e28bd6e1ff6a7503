"""The manifests' edge Envoy run on loopback by the tests: the pinned Envoy with the edge
Deployment's command and the ConfigMap's configuration, its admin and listener on ports the
system picks."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

from tests.deploy.manifests import DESCRIPTORS, ROOT, Doc, named


@contextlib.contextmanager
def local_edge_envoy(
    docs: tuple[Doc, ...], config: Doc, directory: Path, *, log_level: str
) -> Iterator[Path]:
    """Runs the edge Deployment's Envoy with `config` (the admin and listener moved to free
    loopback ports) until the block ends; yields the file Envoy writes its admin address to."""
    config["admin"]["address"]["socket_address"]["port_value"] = 0
    (listener,) = config["static_resources"]["listeners"]
    listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": 0}
    text = yaml.safe_dump(config).replace(
        "/app/" + str(DESCRIPTORS.relative_to(ROOT)), str(DESCRIPTORS)
    )
    (directory / "envoy.yaml").write_text(text)
    (container,) = named(docs, "Deployment", "edge")["spec"]["template"]["spec"]["containers"]
    command = list(container["command"])
    command[0] = str(Path(sys.executable).parent / "envoy")
    command[command.index("--config-path") + 1] = str(directory / "envoy.yaml")
    admin_file = directory / "admin-address"
    envoy = subprocess.Popen(
        [*command, "--admin-address-path", str(admin_file), "--log-level", log_level],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield admin_file
    finally:
        envoy.terminate()
        envoy.wait(timeout=10)
