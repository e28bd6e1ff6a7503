"""Who calls which RPC of whom, by service account: the table the AuthorizationPolicies must
grant exactly (docs/deploy.md, "Authorization"), and the same graph read from the code, so the
table cannot fall behind a new call."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.deploy.manifests import ROOT, rpc_paths

PACKAGE = "chatplane.v1"
"""The public package; Agent, Memory and Persistence's services are in INTERNAL_PACKAGE."""
INTERNAL_PACKAGE = "chatplane.internal.v1"
GATEWAY, AGENT, MEMORY = ("GatewayService", "AgentService", "MemoryService")
# Served by the Gateway next to GatewayService (docs/handoff.md).
OPERATOR = "OperatorService"
# Persistence's focused services, all served by the one persistence workload (docs/api.md).
TURNS, CONVERSATIONS, IDENTITY, AUDIT, QUOTA, HANDOFF, ANALYTICS, PRIVACY, REGISTRY, DATA_KEYS = (
    "TurnService",
    "ConversationService",
    "IdentityService",
    "AuditService",
    "QuotaService",
    "HandoffService",
    "AnalyticsService",
    "PrivacyService",
    "VariantRegistryService",
    "DataKeyService",
)
PERSISTENCE_SERVICES = (
    TURNS,
    CONVERSATIONS,
    IDENTITY,
    AUDIT,
    QUOTA,
    HANDOFF,
    ANALYTICS,
    PRIVACY,
    REGISTRY,
    DATA_KEYS,
)
SERVICES = (GATEWAY, AGENT, MEMORY, OPERATOR, *PERSISTENCE_SERVICES)
# The PersistenceClient attribute that holds each Persistence service's stub.
CLIENT_ATTRIBUTE = {
    TURNS: "turns",
    CONVERSATIONS: "conversations",
    IDENTITY: "identity",
    AUDIT: "audit",
    QUOTA: "quota",
    HANDOFF: "handoff",
    ANALYTICS: "analytics",
    PRIVACY: "privacy",
    REGISTRY: "registry",
    DATA_KEYS: "data_keys",
}
# The workload (Deployment, ServiceAccount, Service name) that serves each contract service.
WORKLOAD = {
    GATEWAY: "gateway",
    AGENT: "agent",
    MEMORY: "memory",
    OPERATOR: "gateway",
    **dict.fromkeys(PERSISTENCE_SERVICES, "persistence"),
}
# The public services: what the edge forwards from end users and operators.
PUBLIC_SERVICES = (GATEWAY, OPERATOR)


def package_of(service: str) -> str:
    """The proto package that defines a contract service."""
    return PACKAGE if service in PUBLIC_SERVICES else INTERNAL_PACKAGE


def method_path(service: str, rpc: str) -> str:
    """The gRPC path of one RPC: `/<package>.<Service>/<Rpc>`."""
    return f"/{package_of(service)}.{service}/{rpc}"


def served_by(workload: str) -> tuple[str, ...]:
    """The contract services a workload serves."""
    return tuple(service for service in SERVICES if WORKLOAD[service] == workload)


INGRESS_ACCOUNT = "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"

# (caller's service account, callee service) → RPCs. `admin` is the account of operators' jobs
# (`chatplane keys create`, `chatplane memory rebuild`); `edge` is the edge Envoy, which
# forwards the public API.
CALLS: dict[tuple[str, str], frozenset[str]] = {
    ("edge", GATEWAY): frozenset(
        {
            "Chat",
            "ListConversations",
            "GetConversation",
            "DeleteConversation",
            "SubmitFeedback",
            "ResumeChat",
            "CancelChat",
            "IngestDocument",
            "UploadDocument",
            "ListDocuments",
            "DeleteDocument",
            "GetDocumentChunk",
            "SetActiveBranch",
            "RequestHandoff",
            "ReleaseHandoff",
            "WatchConversation",
        }
    ),
    ("edge", OPERATOR): frozenset(
        {"ListWaitingConversations", "GetHandedOffConversation", "PostReply", "ReleaseConversation"}
    ),
    ("gateway", AGENT): frozenset({"Generate", "ResumeGenerate", "CancelGenerate"}),
    ("gateway", TURNS): frozenset({"BeginTurn", "GetTurn", "ReleaseTurn", "GetAnswer"}),
    ("gateway", CONVERSATIONS): frozenset(
        {
            "ListConversations",
            "GetConversation",
            "DeleteConversation",
            "SubmitFeedback",
            "SetActiveBranch",
        }
    ),
    ("gateway", QUOTA): frozenset({"ReserveQuota", "SettleQuota"}),
    # Identity: authentication, AdminService's key management; audited auth failures.
    ("gateway", IDENTITY): frozenset(
        {"GetApiKey", "CreateApiKey", "ListApiKeys", "RotateApiKey", "RevokeApiKey"}
    ),
    ("gateway", AUDIT): frozenset({"AppendAuditEvents"}),
    # Human handoff (docs/handoff.md).
    ("gateway", HANDOFF): frozenset(
        {"GetHandoff", "ChangeHandoff", "ListHandoffs", "GetTenantHandoff", "CountThumbsDown"}
    ),
    # Feedback datasets (docs/datasets.md): AdminService.ListRatedAnswers.
    ("gateway", ANALYTICS): frozenset({"ListRatedAnswers"}),
    # AdminService.ExportUserData, erasure and retention (docs/privacy.md).
    ("gateway", PRIVACY): frozenset(
        {"ExportUserRecords", "EraseUser", "SetRetention", "GetRetention"}
    ),
    # The variant registry (docs/registry.md): RegistryService for admins.
    ("gateway", REGISTRY): frozenset(
        {
            "PushVariant",
            "ListVariants",
            "GetVariant",
            "PromoteVariant",
            "RollbackVariant",
            "ListVariantChanges",
        }
    ),
    # Encryption at rest (docs/security.md): data keys to open operator replies, and
    # crypto-shredding for EraseUser.
    ("gateway", DATA_KEYS): frozenset({"GetUserDataKey", "DestroyUserDataKey"}),
    # The variant registry (docs/registry.md): every Agent polls the deployment and resolves
    # versions of pinned turns; encryption at rest: the Agent seals what it logs.
    ("agent", REGISTRY): frozenset({"GetVariantDeployment", "GetVariant"}),
    ("agent", DATA_KEYS): frozenset({"GetUserDataKey"}),
    # The recent turns of a prompt, from the system of record (read-your-writes).
    ("agent", TURNS): frozenset({"GetRecentMessages"}),
    # Encryption at rest: Memory opens the turns it indexes from the log.
    ("memory", DATA_KEYS): frozenset({"GetUserDataKey"}),
    ("gateway", MEMORY): frozenset(
        {
            "Forget",
            "IngestDocument",
            "ListDocuments",
            "DeleteDocument",
            "GetDocumentChunk",
            "ListUserMemory",
        }
    ),
    # Memory indexes turns from the message log; the Agent only recalls.
    ("agent", MEMORY): frozenset({"Recall"}),
    ("admin", IDENTITY): frozenset({"CreateApiKey", "ListApiKeys", "RotateApiKey", "RevokeApiKey"}),
    # `chatplane audit`; `chatplane export` is audited by the CLI itself.
    ("admin", AUDIT): frozenset({"ListAuditRecords", "AppendAuditEvents"}),
    ("admin", QUOTA): frozenset({"SetQuota", "GetQuota"}),
    # `chatplane report variants`, `chatplane dataset export`.
    ("admin", ANALYTICS): frozenset({"ReportVariants", "ListRatedAnswers"}),
    # `chatplane export`, `chatplane erase`, `chatplane retention` (docs/privacy.md).
    ("admin", PRIVACY): frozenset(
        {"ExportUserRecords", "EraseUser", "SetRetention", "GetRetention"}
    ),
    # `chatplane erase` (crypto-shredding).
    ("admin", DATA_KEYS): frozenset({"DestroyUserDataKey"}),
    # Erasure and retention (docs/privacy.md).
    ("persistence", MEMORY): frozenset({"Forget", "EraseUserMemory"}),
    ("admin", MEMORY): frozenset({"Remember", "ListUserMemory"}),
}

# Folders of services/chatplane whose code runs as which account. The launcher only runs on a
# laptop; the CLI's GatewayService calls are end users' calls through the ingress.
CODE_ACCOUNTS = {
    "gateway": "gateway",
    "agent": "agent",
    "memory": "memory",
    "persistence": "persistence",
    "cli": "admin",
}
# Modules outside those folders that make calls, and the accounts whose code runs them (each
# file's calls are those of every account named; docs/security.md "Encryption at rest").
SHARED_CODE: dict[str, tuple[str, ...]] = {
    "privacy/export_archive.py": ("gateway", "admin"),
    "crypto/persistence_key_source.py": ("gateway", "agent", "memory"),
    "crypto/shred_call.py": ("gateway", "admin"),
}
_METHOD_PATH = re.compile(r"^/chatplane(?:\.internal)?\.v1\.(\w+)/(\w+)$")


def principal(account: str) -> str:
    """The SPIFFE principal Istio gives a service account of the chatplane namespace."""
    return f"cluster.local/ns/chatplane/sa/{account}"


def rpcs(service: str) -> frozenset[str]:
    """The RPC names of a contract service."""
    return frozenset(path.rsplit("/", 1)[1] for path in rpc_paths(service))


def calls_in_code() -> dict[tuple[str, str], frozenset[str]]:
    """(account, callee service) → RPCs, from the calls in services/chatplane: a stub call
    `x.<Rpc>(...)` of another service's RPC, or a method path string `/<package>.<S>/<Rpc>`."""
    found: dict[tuple[str, str], set[str]] = {}
    for folder, account in CODE_ACCOUNTS.items():
        for path in sorted((ROOT / "services" / "chatplane" / folder).rglob("*.py")):
            for service, rpc in _calls_in(path):
                if WORKLOAD[service] == account or (folder == "cli" and service in PUBLIC_SERVICES):
                    continue
                found.setdefault((account, service), set()).add(rpc)
    for module, accounts in SHARED_CODE.items():
        for service, rpc in _calls_in(ROOT / "services" / "chatplane" / module):
            for account in accounts:
                if WORKLOAD[service] != account:
                    found.setdefault((account, service), set()).add(rpc)
    return {key: frozenset(value) for key, value in found.items()}


def _calls_in(path: Path) -> set[tuple[str, str]]:
    calls = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            services = [s for s in SERVICES if node.func.attr in rpcs(s)]
            # Persistence's services are called through PersistenceClient, one attribute per
            # service (`persistence.turns.BeginTurn`): the attribute says which, if any.
            receiver_name = (
                node.func.value.attr if isinstance(node.func.value, ast.Attribute) else ""
            )
            services = [
                s
                for s in services
                if s not in PERSISTENCE_SERVICES or CLIENT_ATTRIBUTE[s] == receiver_name
            ]
            if len(services) > 1:
                # An RPC name two services share (ListConversations): the receiver's name
                # (`self._persistence`, `gateway.stub`) says which; if it does not, keep both.
                receiver = ast.unparse(node.func.value).lower()
                services = [s for s in services if WORKLOAD[s] in receiver] or services
            calls |= {(s, node.func.attr) for s in services}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = _METHOD_PATH.match(node.value)
            if match and match.group(1) in SERVICES:
                calls.add((match.group(1), match.group(2)))
    return calls
