"""The workloads of the rendered overlays: hardened pods, sized containers, gRPC health probes
on the service ports, a termination grace longer than the drain, disruption budgets and
autoscalers, protocol-named Service ports, secrets only where needed, pinned production images."""

from __future__ import annotations

import pytest

from chatplane.common.settings import Settings
from tests.deploy.manifests import (
    NAMESPACE,
    OVERLAYS,
    Doc,
    containers,
    named,
    of_kind,
    render,
)

SERVICES = ("gateway", "agent", "memory", "persistence")
AUTOSCALED = ("gateway", "agent")
# Which Secret each workload may read: the system of record's DSN only where it is used.
# Every service holds the key-encryption key (encryption at rest, docs/security.md).
SECRETS = {
    "persistence": {"chatplane-postgres", "chatplane-kek"},
    "memory": {"chatplane-opensearch", "chatplane-kek"},
    "gateway": {"chatplane-kek"},
    "agent": {"chatplane-kek"},
}
# Secrets production takes from its secret store (docs/deploy.md, "Secrets").
EXTERNAL_SECRETS = {"chatplane-postgres", "chatplane-opensearch", "chatplane-kek"}
_UNITS = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}

overlays = pytest.mark.parametrize("overlay", OVERLAYS)


def quantity(value: object) -> float:
    """A Kubernetes quantity (`250m`, `512Mi`, `2`) as a number."""
    text = str(value)
    for suffix, factor in _UNITS.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def config(docs: tuple[Doc, ...]) -> dict[str, str]:
    (config_map,) = [
        c
        for c in of_kind(docs, "ConfigMap")
        if c["metadata"]["name"].startswith("chatplane-config")
    ]
    return dict(config_map["data"])


def pod(deployment: Doc) -> Doc:
    return dict(deployment["spec"]["template"]["spec"])


@overlays
def test_every_pod_runs_non_root_read_only_without_capabilities(overlay: str) -> None:
    for deployment in of_kind(render(overlay), "Deployment"):
        spec = pod(deployment)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] > 0
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        assert spec["serviceAccountName"] == deployment["metadata"]["name"]
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(spec)
        assert all("hostPath" not in v for v in spec["volumes"])
        scratch = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for container in containers(deployment):
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["privileged"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts["/tmp"] in scratch  # the only writable place besides the data dir


@overlays
def test_every_container_has_requests_within_limits(overlay: str) -> None:
    for deployment in of_kind(render(overlay), "Deployment"):
        for container in containers(deployment):
            resources = container["resources"]
            for resource in ("cpu", "memory"):
                request = quantity(resources["requests"][resource])
                limit = quantity(resources["limits"][resource])
                assert 0 < request <= limit, (deployment["metadata"]["name"], resource)


@overlays
def test_services_are_probed_over_grpc_health_on_their_port(overlay: str) -> None:
    docs = render(overlay)
    settings = config(docs)
    for name in SERVICES:
        (container,) = pod(named(docs, "Deployment", name))["containers"]
        port = int(settings[f"CHATPLANE_{name.upper()}_PORT"])
        assert {"name": "grpc", "containerPort": port} in container["ports"]
        assert container["command"] == ["python", "-m", f"chatplane.{name}"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert set(container[probe]) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}
            assert container[probe]["grpc"]["port"] == port
        # Readiness asks for the service itself: it turns NOT_SERVING as the drain begins.
        assert container["readinessProbe"]["grpc"]["service"].startswith(
            ("chatplane.v1.", "chatplane.internal.v1.")
        )
        (service,) = [s for s in of_kind(docs, "Service") if s["metadata"]["name"] == name]
        (service_port,) = service["spec"]["ports"]
        assert service_port == {
            "name": f"grpc-{name}",
            "port": port,
            "targetPort": "grpc",
            "appProtocol": "grpc",
        }


@overlays
def test_the_edge_is_reached_over_http2(overlay: str) -> None:
    """gRPC from the ingress gateway to the edge needs HTTP/2, which Istio only uses towards
    a port it knows to speak it."""
    (service,) = [s for s in of_kind(render(overlay), "Service") if s["metadata"]["name"] == "edge"]
    (port,) = service["spec"]["ports"]
    assert port["appProtocol"] == "http2" and port["name"].startswith("http2-")


@overlays
def test_termination_grace_outlasts_the_pre_stop_pause_and_the_drain(overlay: str) -> None:
    docs = render(overlay)
    drain = float(config(docs).get("CHATPLANE_DRAIN_GRACE_SECONDS", Settings().drain_grace_seconds))
    for deployment in of_kind(docs, "Deployment"):
        spec = pod(deployment)
        (container,) = spec["containers"]
        hook = container["lifecycle"]["preStop"]
        # A pause while endpoints update, then SIGTERM starts the process's own drain (the
        # edge's too: `python -m chatplane.edge` drains Envoy).
        before_sigterm = hook["sleep"]["seconds"] + drain
        assert spec["terminationGracePeriodSeconds"] >= before_sigterm + 5
        sidecar = deployment["spec"]["template"]["metadata"]["annotations"]["proxy.istio.io/config"]
        # The sidecar stops accepting only after the service has drained.
        drain_duration = float(sidecar.split("terminationDrainDuration:")[1].split("s")[0])
        assert before_sigterm <= drain_duration < spec["terminationGracePeriodSeconds"]


@overlays
def test_metrics_are_announced_on_the_metrics_port(overlay: str) -> None:
    docs = render(overlay)
    port = config(docs)["CHATPLANE_METRICS_PORT"]
    for name in SERVICES:
        deployment = named(docs, "Deployment", name)
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == port
        assert annotations["prometheus.io/path"] == "/metrics"


@overlays
def test_every_workload_has_a_disruption_budget_and_the_stream_tiers_autoscale(
    overlay: str,
) -> None:
    docs = render(overlay)
    budgets = {
        tuple(sorted(p["spec"]["selector"]["matchLabels"].items())): p
        for p in of_kind(docs, "PodDisruptionBudget")
    }
    for deployment in of_kind(docs, "Deployment"):
        labels = deployment["spec"]["selector"]["matchLabels"]
        budget = budgets[tuple(sorted(labels.items()))]
        assert budget["spec"]["maxUnavailable"] == 1
        template_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels.items() <= template_labels.items()
    autoscalers = {
        h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(docs, "HorizontalPodAutoscaler")
    }
    assert set(autoscalers) == set(AUTOSCALED)
    minimum = 3 if overlay == "prod" else 1
    for deployment in of_kind(docs, "Deployment"):
        name = deployment["metadata"]["name"]
        if name in AUTOSCALED:
            # The autoscaler owns the count: re-applying the manifests must not reset it.
            assert "replicas" not in deployment["spec"]
            spec = autoscalers[name]["spec"]
            assert minimum <= spec["minReplicas"] < spec["maxReplicas"]
        else:
            assert deployment["spec"]["replicas"] >= minimum


@overlays
def test_secrets_reach_only_the_services_that_use_them(overlay: str) -> None:
    docs = render(overlay)
    generated = {s["metadata"]["name"] for s in of_kind(docs, "Secret")}
    for deployment in of_kind(docs, "Deployment"):
        name = deployment["metadata"]["name"]
        used = {
            env["valueFrom"]["secretKeyRef"]["name"]
            for container in containers(deployment)
            for env in container.get("env", [])
            if "secretKeyRef" in env.get("valueFrom", {})
        }
        assert all(
            "secretRef" not in e for c in containers(deployment) for e in c.get("envFrom", [])
        )
        expected = SECRETS.get(name, set())
        if overlay == "dev":
            # Development credentials are generated (with a content hash in the name).
            assert used <= generated
            assert {u.rsplit("-", 1)[0] for u in used} == expected
        else:
            assert used == expected
            assert used <= EXTERNAL_SECRETS and not generated


@overlays
def test_images_are_pinned_and_production_never_runs_latest(overlay: str) -> None:
    for deployment in of_kind(render(overlay), "Deployment"):
        for container in containers(deployment):
            image = container["image"]
            name, _, tag = image.rpartition(":")
            assert name and tag and "/" not in tag, image
            assert tag != "latest"
            if overlay == "prod":
                assert tag[0].isdigit() or "@sha256:" in image, image


@overlays
def test_everything_lives_in_the_chatplane_or_the_istio_root_namespace(overlay: str) -> None:
    for doc in render(overlay):
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == NAMESPACE
            assert doc["metadata"]["labels"]["istio-injection"] == "enabled"
        else:
            assert doc["metadata"]["namespace"] in {NAMESPACE, "istio-system"}
