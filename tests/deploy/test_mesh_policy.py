"""The Istio policy of the rendered overlays: mTLS STRICT everywhere, deny by default, each
service reachable only from the accounts that call it and only on the RPCs they call, end
users authenticated at the ingress, streams never cut or retried, reads the only retried calls."""

from __future__ import annotations

from typing import Any

import pytest

from chatplane.gateway.chat import CONVERSATION_ID_HEADER
from tests.deploy.call_graph import (
    AUDIT,
    CALLS,
    CONVERSATIONS,
    GATEWAY,
    HANDOFF,
    IDENTITY,
    INGRESS_ACCOUNT,
    MEMORY,
    PACKAGE,
    PRIVACY,
    PUBLIC_SERVICES,
    QUOTA,
    REGISTRY,
    TURNS,
    WORKLOAD,
    calls_in_code,
    method_path,
    principal,
    served_by,
)
from tests.deploy.manifests import (
    NAMESPACE,
    OVERLAYS,
    Doc,
    contract,
    http_routes,
    named,
    of_kind,
    render,
    rpc_paths,
    walk,
)

# Reads: the only RPCs a VirtualService may retry (nothing changes when they run twice).
READ_RPCS = frozenset(
    {
        method_path(TURNS, "GetTurn"),
        method_path(TURNS, "GetAnswer"),
        method_path(CONVERSATIONS, "ListConversations"),
        method_path(CONVERSATIONS, "GetConversation"),
        method_path(IDENTITY, "GetApiKey"),
        method_path(IDENTITY, "ListApiKeys"),
        method_path(QUOTA, "GetQuota"),
        method_path(AUDIT, "ListAuditRecords"),
        method_path(HANDOFF, "GetHandoff"),
        method_path(HANDOFF, "ListHandoffs"),
        method_path(HANDOFF, "GetTenantHandoff"),
        method_path(HANDOFF, "CountThumbsDown"),
        # The variant registry (docs/registry.md).
        method_path(REGISTRY, "ListVariants"),
        method_path(REGISTRY, "GetVariant"),
        method_path(REGISTRY, "ListVariantChanges"),
        method_path(REGISTRY, "GetVariantDeployment"),
        method_path(TURNS, "GetRecentMessages"),
        method_path(PRIVACY, "GetRetention"),
        method_path(MEMORY, "Recall"),
        method_path(GATEWAY, "ListConversations"),
        method_path(GATEWAY, "GetConversation"),
        method_path(GATEWAY, "ListDocuments"),
        method_path(MEMORY, "ListDocuments"),
        method_path(GATEWAY, "GetDocumentChunk"),
        method_path(MEMORY, "GetDocumentChunk"),
        method_path(MEMORY, "ListUserMemory"),
    }
)
SERVICE_PORTS = {"gateway": 50051, "agent": 50052, "memory": 50053, "persistence": 50054}
INGRESS_SELECTOR = {"istio": "ingressgateway"}

overlays = pytest.mark.parametrize("overlay", OVERLAYS)


def streaming_paths() -> frozenset[str]:
    """The server-streaming RPCs of the contract (answers that last minutes)."""
    return frozenset(
        f"/{file.package}.{svc.name}/{method.name}"
        for file in contract().file
        for svc in file.service
        for method in svc.method
        if method.server_streaming
    )


def app_policies(docs: tuple[Doc, ...]) -> list[Doc]:
    return [
        p for p in of_kind(docs, "AuthorizationPolicy") if p["metadata"]["namespace"] == NAMESPACE
    ]


def selected_workload(policy: Doc) -> str:
    labels = policy["spec"]["selector"]["matchLabels"]
    assert list(labels) == ["app.kubernetes.io/name"], policy["metadata"]["name"]
    return str(labels["app.kubernetes.io/name"])


def test_the_call_table_is_the_call_graph_of_the_code() -> None:
    """A new call between services must show up in the table (and so in a policy)."""
    expected = {key: rpcs for key, rpcs in CALLS.items() if key[0] != "edge"}
    assert calls_in_code() == expected


@overlays
def test_mtls_is_strict_mesh_wide_and_in_the_namespace_and_never_relaxed(overlay: str) -> None:
    docs = render(overlay)
    peer = of_kind(docs, "PeerAuthentication")
    scopes = {(p["metadata"]["namespace"], "selector" in p["spec"]) for p in peer}
    assert ("istio-system", False) in scopes  # mesh-wide: root namespace, no selector
    assert (NAMESPACE, False) in scopes
    for policy in peer:
        assert policy["spec"]["mtls"]["mode"] == "STRICT"
        for port in policy["spec"].get("portLevelMtls", {}).values():
            assert port["mode"] == "STRICT"
    values = {str(v).upper() for v in walk(list(docs)) if isinstance(v, str)}
    assert not values & {"PERMISSIVE", "DISABLE", "UNSET"}
    for rule in of_kind(docs, "DestinationRule"):
        policy = rule["spec"]["trafficPolicy"]
        assert policy["tls"]["mode"] == "ISTIO_MUTUAL", rule["metadata"]["name"]
        for port in policy.get("portLevelSettings", []):
            assert port.get("tls", {"mode": "ISTIO_MUTUAL"})["mode"] == "ISTIO_MUTUAL"


@overlays
def test_the_namespace_denies_by_default(overlay: str) -> None:
    docs = render(overlay)
    deny = named(docs, "AuthorizationPolicy", "default-deny")
    assert deny["metadata"]["namespace"] == NAMESPACE
    assert deny["spec"] == {}  # ALLOW nothing: every request needs a policy naming it
    for policy in app_policies(docs):
        assert policy["spec"].get("action", "ALLOW") == "ALLOW"
        if policy["spec"]:
            # An ALLOW rule without a selector would apply to every workload.
            selected_workload(policy)
    deployments = {d["metadata"]["name"] for d in of_kind(docs, "Deployment")}
    selected = [selected_workload(p) for p in app_policies(docs) if p["spec"]]
    assert sorted(selected) == sorted(deployments)  # one policy per workload, none unguarded


def grants(policy: Doc) -> set[tuple[str, str, str, str]]:
    """(principal, method, path, port) that one ALLOW policy lets through."""
    granted = set()
    for rule in policy["spec"]["rules"]:
        assert set(rule) == {"from", "to"}, "a rule without `from` admits any caller"
        assert "when" not in rule
        sources: list[str] = []
        for entry in rule["from"]:
            assert set(entry["source"]) == {"principals"}, entry
            sources += entry["source"]["principals"]
        for entry in rule["to"]:
            operation: dict[str, Any] = entry["operation"]
            assert set(operation) == {"ports", "methods", "paths"}, operation
            for source in sources:
                assert "*" not in source
                granted |= {
                    (source, method, path, port)
                    for method in operation["methods"]
                    for path in operation["paths"]
                    for port in operation["ports"]
                }
    return granted


@overlays
def test_each_service_admits_exactly_its_callers_on_exactly_their_rpcs(overlay: str) -> None:
    docs = render(overlay)
    by_workload = {selected_workload(p): p for p in app_policies(docs) if p["spec"]}
    for workload in sorted(set(WORKLOAD.values())):
        services = served_by(workload)
        expected = {
            (
                principal(account),
                "POST",
                method_path(service, rpc),
                str(SERVICE_PORTS[workload]),
            )
            for (account, callee), rpcs in CALLS.items()
            for service in services
            if callee == service
            for rpc in rpcs
        }
        granted = grants(by_workload[workload])
        assert granted == expected, workload
        served = frozenset().union(*(rpc_paths(service) for service in services))
        assert {path for _, _, path, _ in granted} <= served  # exact, real paths


@overlays
def test_the_edge_admits_only_the_ingress_gateway_on_the_public_api(overlay: str) -> None:
    docs = render(overlay)
    (edge,) = [p for p in app_policies(docs) if p["spec"] and selected_workload(p) == "edge"]
    granted = grants(edge)
    assert {source for source, *_ in granted} == {INGRESS_ACCOUNT}
    assert {port for *_, port in granted} == {"8080"}
    public = {
        f"/{PACKAGE}.{service}/{rpc}"
        for service in PUBLIC_SERVICES
        for rpc in CALLS[("edge", service)]
    }
    assert public == set().union(*(rpc_paths(service) for service in PUBLIC_SERVICES))
    routes = set().union(*(http_routes(service) for service in PUBLIC_SERVICES))
    grpc_grants = {(m, p) for _, m, p, _ in granted if p.startswith(f"/{PACKAGE}.")}
    assert {p for m, p in grpc_grants if m == "POST"} == public
    assert {m for m, _ in grpc_grants} <= {"POST", "OPTIONS"}  # gRPC-Web preflights
    rest = {(m, p) for _, m, p, _ in granted if not p.startswith(f"/{PACKAGE}.")}
    assert {(m, p) for m, p in rest if m != "OPTIONS"} == routes
    assert {p for m, p in rest if m == "OPTIONS"} <= {p for _, p in routes}


@overlays
def test_end_users_need_a_verified_jwt_at_the_ingress(overlay: str) -> None:
    docs = render(overlay)
    (authn,) = of_kind(docs, "RequestAuthentication")
    assert authn["metadata"]["namespace"] == "istio-system"
    assert authn["spec"]["selector"]["matchLabels"] == INGRESS_SELECTOR
    for rule in authn["spec"]["jwtRules"]:
        assert rule["issuer"] and rule["jwksUri"].startswith("https://") and rule["audiences"]
        # Not the authorization header: that one carries the tenant's API key to the Gateway.
        assert [h["name"] for h in rule["fromHeaders"]] == ["x-chatplane-user-token"]
    hosts = {h for g in of_kind(docs, "Gateway") for s in g["spec"]["servers"] for h in s["hosts"]}
    ingress_denials = [
        p
        for p in of_kind(docs, "AuthorizationPolicy")
        if p["metadata"]["namespace"] == "istio-system"
        and p["spec"]["selector"]["matchLabels"] == INGRESS_SELECTOR
    ]
    (require,) = ingress_denials
    assert require["spec"]["action"] == "DENY"
    (rule,) = require["spec"]["rules"]
    assert rule["from"] == [{"source": {"notRequestPrincipals": ["*"]}}]
    (operation,) = [entry["operation"] for entry in rule["to"]]
    assert set(operation) == {"hosts", "notMethods"}  # the whole host, every path
    assert operation["notMethods"] == ["OPTIONS"]  # CORS preflights carry no credentials
    assert set(operation["hosts"]) == hosts | {f"{h}:*" for h in hosts}


@overlays
def test_the_ingress_serves_https_only(overlay: str) -> None:
    (gateway,) = of_kind(render(overlay), "Gateway")
    assert gateway["spec"]["selector"] == INGRESS_SELECTOR
    for server in gateway["spec"]["servers"]:
        if server["port"]["protocol"] == "HTTPS":
            assert server["tls"]["mode"] == "SIMPLE" and server["tls"]["credentialName"]
        else:
            assert server["tls"] == {"httpsRedirect": True}


def routes(docs: tuple[Doc, ...]) -> list[tuple[str, Doc, list[str]]]:
    """(VirtualService, http route, exact paths it matches) for every route."""
    found = []
    for service in of_kind(docs, "VirtualService"):
        for route in service["spec"]["http"]:
            paths = [m["uri"]["exact"] for m in route.get("match", [])]
            found.append((service["metadata"]["name"], route, paths))
    return found


@overlays
def test_only_reads_are_retried_and_streams_have_no_route_timeout(overlay: str) -> None:
    docs = render(overlay)
    for name, route, paths in routes(docs):
        # Istio retries by default (2 attempts on `unavailable`, …): writes must say 0.
        attempts = route["retries"]["attempts"]
        if attempts:
            assert paths and set(paths) <= READ_RPCS, (name, route["name"])
            assert "perTryTimeout" in route["retries"]
        if any(p in streaming_paths() for p in paths) or not paths:
            # Streams (and the ingress route, which carries them) end when the caller's
            # deadline says so, not when a route timeout fires.
            assert route["timeout"] == "0s", (name, route["name"])
            assert attempts == 0


@overlays
def test_every_rpc_of_every_service_is_routed(overlay: str) -> None:
    """A VirtualService answers 404 to a path none of its routes match."""
    docs = render(overlay)
    for workload in sorted(set(WORKLOAD.values())):
        host = f"{workload}.{NAMESPACE}.svc.cluster.local"
        (virtual,) = [v for v in of_kind(docs, "VirtualService") if v["spec"]["hosts"] == [host]]
        matched = [m["uri"]["exact"] for r in virtual["spec"]["http"] for m in r["match"]]
        served = set().union(*(rpc_paths(service) for service in served_by(workload)))
        assert sorted(matched) == sorted(served)
        for route in virtual["spec"]["http"]:
            for destination in route["route"]:
                assert destination["destination"]["host"] == host
                assert destination["destination"]["port"]["number"] == SERVICE_PORTS[workload]


@overlays
def test_destination_rules_eject_failing_replicas_and_hash_conversations_to_agents(
    overlay: str,
) -> None:
    docs = render(overlay)
    rules = {r["spec"]["host"]: r for r in of_kind(docs, "DestinationRule")}
    for service in of_kind(docs, "Service"):
        host = f"{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
        outlier = rules[host]["spec"]["trafficPolicy"]["outlierDetection"]
        assert outlier["consecutiveGatewayErrors"] > 0 and outlier["maxEjectionPercent"] < 100
    agent = rules[f"agent.{NAMESPACE}.svc.cluster.local"]["spec"]["trafficPolicy"]
    assert agent["loadBalancer"] == {"consistentHash": {"httpHeaderName": CONVERSATION_ID_HEADER}}
