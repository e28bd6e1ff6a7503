"""Rewrites Python callers of the contracts that moved to `chatplane.internal.v1` and of the
PersistenceService that was split into focused services (docs/api.md, "Public and internal
contracts"). Idempotent; run it on a branch that still uses the old names, then `ruff check
--fix` and `ruff format` the files it lists:

    python scripts/migrate_internal_contracts.py services tests bench

What it does, file by file (*.py):
1. `persistence_pb2.X` → the internal module that now defines X (`turn_pb2.BeginTurnRequest`,
   `conversation_pb2.ListConversationsRequest` for `PersistenceServiceListConversationsRequest`,
   ...); the few messages the Admin API shares (Owner, ApiKeyInfo, RatedAnswer, DatasetMessage)
   → `chatplane.v1.admin_resources_pb2`.
2. `agent_pb2`, `agent_pb2_grpc`, `memory_pb2`, `memory_pb2_grpc`, `events_pb2`, `audit_pb2`
   are imported from `chatplane.internal.v1` instead of `chatplane.v1`.
3. Prefixes that only avoided collisions are dropped (`admin_pb2.AdminServiceCreateApiKeyRequest`
   → `admin_pb2.CreateApiKeyRequest`, `gateway_pb2.GatewayServiceListDocumentsRequest` →
   `gateway_pb2.ListDocumentsRequest`).
4. `persistence_pb2_grpc.PersistenceServiceStub(channel)` and `...PersistenceServiceAsyncStub`
   → `PersistenceClient(channel)` / `PersistenceClient` (chatplane.persistence.client), and a
   call `<receiver>.<Rpc>(` → `<receiver>.<service>.<Rpc>(` (`persistence.BeginTurn(` →
   `persistence.turns.BeginTurn(`). RPC names that only Persistence has are rewritten on any
   receiver; names the public API shares (ListConversations, CreateApiKey, EraseUser, ...) only
   when the receiver is a PersistenceClient in that file (assigned or annotated as one) or its
   name mentions persistence. Those left are printed for review.
5. gRPC method paths and full names: `/chatplane.v1.PersistenceService/BeginTurn` →
   `/chatplane.internal.v1.TurnService/BeginTurn`, `chatplane.v1.AgentService` (and Memory)
   → `chatplane.internal.v1.AgentService`. (Run the same on istio/ YAML by hand if needed:
   tests/deploy checks every path.)
6. Prose: `PersistenceService.BeginTurn` → `TurnService.BeginTurn`; any other
   `PersistenceService` → `Persistence` (the process).
The persistence servicers themselves (rewritten by hand) are skipped for step 4.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# message → (package, module) for what persistence_pb2 held.
_MODULES: dict[str, list[str]] = {
    "turn_pb2": ["BeginTurn", "GetTurn", "ReleaseTurn", "GetAnswer"],
    "conversation_pb2": [
        "ListConversations",
        "GetConversation",
        "DeleteConversation",
        "SubmitFeedback",
        "SetActiveBranch",
    ],
    "identity_pb2": ["CreateApiKey", "GetApiKey", "ListApiKeys", "RotateApiKey", "RevokeApiKey"],
    "audit_pb2": ["AppendAuditEvents", "ListAuditRecords"],
    "quota_pb2": ["ReserveQuota", "SettleQuota", "SetQuota", "GetQuota"],
    "handoff_pb2": [
        "GetHandoff",
        "ChangeHandoff",
        "ListHandoffs",
        "GetTenantHandoff",
        "CountThumbsDown",
    ],
    "analytics_pb2": ["ReportVariants", "ListRatedAnswers"],
    "privacy_pb2": ["ExportUserRecords", "EraseUser", "SetRetention", "GetRetention"],
    "variant_registry_pb2": [
        "PushRegistryVariant",
        "ListRegistryVariants",
        "GetRegistryVariant",
        "PromoteRegistryVariant",
        "RollbackRegistryVariant",
        "ListRegistryChanges",
        "GetVariantDeployment",
    ],
    "data_key_pb2": ["GetUserDataKey", "DestroyUserDataKey"],
}
# the PersistenceClient attribute of each internal service module
_ATTRIBUTES = {
    "turn_pb2": "turns",
    "conversation_pb2": "conversations",
    "identity_pb2": "identity",
    "audit_pb2": "audit",
    "quota_pb2": "quota",
    "handoff_pb2": "handoff",
    "analytics_pb2": "analytics",
    "privacy_pb2": "privacy",
    "variant_registry_pb2": "registry",
    "data_key_pb2": "data_keys",
}
# the service each internal module defines
_SERVICES = {
    "turn_pb2": "TurnService",
    "conversation_pb2": "ConversationService",
    "identity_pb2": "IdentityService",
    "audit_pb2": "AuditService",
    "quota_pb2": "QuotaService",
    "handoff_pb2": "HandoffService",
    "analytics_pb2": "AnalyticsService",
    "privacy_pb2": "PrivacyService",
    "variant_registry_pb2": "VariantRegistryService",
    "data_key_pb2": "DataKeyService",
}
_RPC_RENAMES = {
    "PushRegistryVariant": "PushVariant",
    "ListRegistryVariants": "ListVariants",
    "GetRegistryVariant": "GetVariant",
    "PromoteRegistryVariant": "PromoteVariant",
    "RollbackRegistryVariant": "RollbackVariant",
    "ListRegistryChanges": "ListVariantChanges",
}
_EXTRA = {
    "TokenQuota": "quota_pb2",
    "VariantReport": "analytics_pb2",
    "ExportedFeedback": "privacy_pb2",
    "ExportedAnswer": "privacy_pb2",
}
_PUBLIC_SHARED = {"Owner", "ApiKeyInfo", "RatedAnswer", "DatasetMessage"}
_MOVED_MODULES = [
    "agent_pb2_grpc",
    "agent_pb2",
    "memory_pb2_grpc",
    "memory_pb2",
    "events_pb2_grpc",
    "events_pb2",
    "audit_pb2_grpc",
    "audit_pb2",
]
# RPC names the public API also has: rewritten only on a receiver that names persistence.
_SHARED_RPCS = {
    "ListConversations",
    "GetConversation",
    "DeleteConversation",
    "SubmitFeedback",
    "SetActiveBranch",
    "CreateApiKey",
    "ListApiKeys",
    "RotateApiKey",
    "RevokeApiKey",
    "ListRatedAnswers",
    "EraseUser",
    "SetRetention",
    "GetRetention",
}
_SKIP_CALLS = re.compile(
    r"persistence/(servicers/|servicer\.py|.*_servicer\.py|.*_rpcs\.py|service\.py)"
    r"|crypto/data_key_servicer\.py|migrate_internal_contracts\.py"
)


def _message_map() -> dict[str, tuple[str, str, str]]:
    """old persistence_pb2 name → (package, module, new name)."""
    out: dict[str, tuple[str, str, str]] = {}
    for module, rpcs in _MODULES.items():
        for rpc in rpcs:
            new_rpc = _RPC_RENAMES.get(rpc, rpc)
            for suffix in ("Request", "Response"):
                entry = ("chatplane.internal.v1", module, new_rpc + suffix)
                out[rpc + suffix] = entry
                out["PersistenceService" + rpc + suffix] = entry
    for name, module in _EXTRA.items():
        out[name] = ("chatplane.internal.v1", module, name)
    for name in _PUBLIC_SHARED:
        out[name] = ("chatplane.v1", "admin_resources_pb2", name)
    return out


_MESSAGES = _message_map()
_RPC_MODULE = {rpc: module for module, rpcs in _MODULES.items() for rpc in rpcs}
_IMPORT = re.compile(r"^from chatplane\.v1 import (\([^)]*\)|[^\n]*)\n", re.M)


def _rewrite_imports(text: str, internal: set[str], public: set[str]) -> str:
    """Moves internal modules out of `from chatplane.v1 import ...` and adds what is needed."""
    match = _IMPORT.search(text)
    names: list[str] = []
    if match:
        names = [n.strip() for n in match.group(1).strip("()").replace("\n", " ").split(",")]
        names = [n for n in names if n]
    moved = {"persistence_pb2", "persistence_pb2_grpc", *_MOVED_MODULES}
    if not internal and not public and not moved & set(names):
        return text
    kept = [
        n
        for n in names
        if n not in _MOVED_MODULES and n not in {"persistence_pb2", "persistence_pb2_grpc"}
    ]
    internal |= {n for n in names if n in _MOVED_MODULES}
    public_names = sorted(set(kept) | public)
    lines = ""
    if public_names:
        lines += f"from chatplane.v1 import {', '.join(public_names)}\n"
    if internal:
        lines += f"from chatplane.internal.v1 import {', '.join(sorted(internal))}\n"
    if match:
        return text[: match.start()] + lines + text[match.end() :]
    if not lines:
        return text
    # no chatplane.v1 import yet: put ours after the last chatplane import
    last = list(re.finditer(r"^from chatplane\.[\w.]+ import (\([^)]*\)|[^\n]*)\n", text, re.M))
    at = last[-1].end() if last else 0
    return text[:at] + lines + text[at:]


def migrate(path: Path) -> bool:
    """Rewrites one file; True when it changed."""
    text = original = path.read_text()
    internal: set[str] = set()
    public: set[str] = set()

    def message(match: re.Match[str]) -> str:
        package, module, name = _MESSAGES.get(match.group(1), ("", "", ""))
        if not module:
            print(f"{path}: persistence_pb2.{match.group(1)} has no new home", file=sys.stderr)
            return match.group(0)
        (internal if package == "chatplane.internal.v1" else public).add(module)
        return f"{module}.{name}"

    text = re.sub(r"\bpersistence_pb2\.(\w+)", message, text)
    # `from chatplane.v1.agent_pb2_grpc import X`, `import chatplane.v1.memory_pb2`
    for module in _MOVED_MODULES:
        text = re.sub(rf"\bchatplane\.v1\.{module}\b", f"chatplane.internal.v1.{module}", text)
    text = re.sub(
        r"\b(admin_pb2|gateway_pb2)\.(AdminService|GatewayService)(\w+(Request|Response))\b",
        r"\1.\3",
        text,
    )
    uses_client = "PersistenceService" in text and "persistence_pb2_grpc" in text
    text = text.replace("persistence_pb2_grpc.PersistenceServiceStub(", "PersistenceClient(")
    text = text.replace("persistence_pb2_grpc.PersistenceServiceAsyncStub", "PersistenceClient")
    text = re.sub(
        r"\bfrom chatplane\.v1\.persistence_pb2_grpc import PersistenceServiceAsyncStub\n",
        "from chatplane.persistence.client import PersistenceClient\n",
        text,
    )
    text = re.sub(r"\bPersistenceServiceAsyncStub\b", "PersistenceClient", text)
    if not _SKIP_CALLS.search(str(path)):
        clients = set(
            re.findall(r"([\w.]+)\s*(?::\s*PersistenceClient\b|=\s*PersistenceClient\()", text)
        )

        # A name also annotated as another service's stub in the file is ambiguous: left alone.
        clients -= set(re.findall(r"(\w+): \w+_pb2_grpc\.\w+Stub\b", text))

        def call(match: re.Match[str]) -> str:
            receiver, rpc = match.group(1), match.group(2)
            persistence = (
                receiver in clients
                or receiver.startswith("PersistenceClient(")
                or "persistence" in receiver.lower()
            )
            if rpc in _SHARED_RPCS and not persistence:
                print(f"{path}: left {receiver}.{rpc}( for review", file=sys.stderr)
                return match.group(0)
            attribute = _ATTRIBUTES[_RPC_MODULE[rpc]]
            if receiver == attribute or receiver.endswith("." + attribute):
                return match.group(0)  # already migrated (the script is idempotent)
            return f"{receiver}.{attribute}.{_RPC_RENAMES.get(rpc, rpc)}("

        rpcs = "|".join(sorted(_RPC_MODULE, key=len, reverse=True))
        text = re.sub(rf"((?:\w+\.)*\w+(?:\([^()]*\))?)\.({rpcs})\(", call, text)
    text = _rewrite_imports(text, internal, public)
    # Prose: `PersistenceService.BeginTurn` names its new service; the rest says Persistence.
    if "test_generated_code" not in str(path):  # it names the old services on purpose
        # gRPC method paths and full service names (`/chatplane.v1.PersistenceService/BeginTurn`).
        text = re.sub(
            r"/chatplane\.v1\.PersistenceService/(\w+)",
            lambda m: (
                f"/chatplane.internal.v1.{_SERVICES[_RPC_MODULE[m.group(1)]]}/"
                f"{_RPC_RENAMES.get(m.group(1), m.group(1))}"
            ),
            text,
        )
        text = re.sub(
            r"\bchatplane\.v1\.(AgentService|MemoryService)\b", r"chatplane.internal.v1.\1", text
        )
        text = re.sub(
            r"\bPersistenceService\.(\w+)",
            lambda m: (
                f"{_SERVICES[_RPC_MODULE[m.group(1)]]}.{_RPC_RENAMES.get(m.group(1), m.group(1))}"
                if m.group(1) in _RPC_MODULE
                else m.group(0)
            ),
            text,
        )
        text = re.sub(r"\bPersistenceService\b", "Persistence", text)
    if uses_client and "import PersistenceClient" not in text:
        text = _add_line(text, "from chatplane.persistence.client import PersistenceClient\n")
    if text != original:
        path.write_text(text)
        return True
    return False


def _add_line(text: str, line: str) -> str:
    last = list(re.finditer(r"^from chatplane\.[\w.]+ import (\([^)]*\)|[^\n]*)\n", text, re.M))
    at = last[-1].end() if last else 0
    return text[:at] + line + text[at:]


def main(roots: list[str]) -> None:
    for root in roots:
        for path in sorted(Path(root).rglob("*.py")):
            if migrate(path):
                print(path)


if __name__ == "__main__":
    main(sys.argv[1:] or ["services", "tests", "bench"])
