"""The manifests' edge run on loopback by the tests: the edge Deployment's command with the pod's
environment (the ConfigMap chatplane-config and the container's own variables), only its
listener and admin moved to ports the system picks, its upstream and data directory given by
the test."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.deploy.manifests import Doc, config_map, named

READY_TIMEOUT_SECONDS = 60.0


def edge_container(docs: tuple[Doc, ...]) -> Doc:
    """The edge Deployment's one container."""
    (container,) = named(docs, "Deployment", "edge")["spec"]["template"]["spec"]["containers"]
    return container


def pod_environment(docs: tuple[Doc, ...]) -> dict[str, str]:
    """The CHATPLANE_* variables the edge container gets: its envFrom ConfigMap, then its env."""
    container = edge_container(docs)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        (found,) = [c for c in docs if c["kind"] == "ConfigMap" and c["metadata"]["name"] == name]
        env.update(found["data"])
    env.update({item["name"]: item["value"] for item in container.get("env", [])})
    return env


def envoy_folder(docs: tuple[Doc, ...], directory: Path) -> Path:
    """The ConfigMap edge-envoy written out as the pod sees it mounted; the folder."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in config_map(docs, "edge-envoy")["data"].items():
        (directory / name).write_text(text)
    return directory


@dataclass(frozen=True)
class LocalEdge:
    """A running edge: its listener and admin ports and the configuration Envoy runs."""

    process: subprocess.Popen[bytes]
    port: int
    admin_port: int
    config_path: Path


@contextlib.contextmanager
def local_edge(
    docs: tuple[Doc, ...], directory: Path, *, gateway_address: str
) -> Iterator[LocalEdge]:
    """Runs the edge Deployment's command as the pod would, until the block ends (SIGTERM)."""
    container = edge_container(docs)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPLANE_")}
    env.update(pod_environment(docs))
    env.update(
        CHATPLANE_EDGE_HOST="127.0.0.1",
        CHATPLANE_EDGE_PORT="0",
        CHATPLANE_EDGE_ADMIN_PORT="0",
        CHATPLANE_GATEWAY_ADDRESS=gateway_address,
        CHATPLANE_DATA_DIR=str(directory),
    )
    command = [sys.executable if part == "python" else part for part in container["command"]]
    with (directory / "edge.log").open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=log)
    try:
        ready = _ready_line(process)
        yield LocalEdge(
            process, ready["port"], ready["admin_port"], directory / "edge" / "envoy.yaml"
        )
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        assert process.stdout is not None
        process.stdout.close()


def _ready_line(process: subprocess.Popen[bytes]) -> dict[str, int]:
    assert process.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while (remaining := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([process.stdout], [], [], remaining)
        if not readable:
            break
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"the edge exited with {process.wait()} before it was ready")
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if event.get("event") == "ready":
                return {"port": int(event["port"]), "admin_port": int(event["admin_port"])}
    raise AssertionError("the edge was not ready in time")
