"""The generated TypeScript (gen/ts) type-checks against the pinned @bufbuild/protobuf runtime,
and its GatewayService descriptor has what @connectrpc/connect needs (clients/ts/check.ts).
The Go code (gen/go) is compiled by every test that builds clients/go; the Go client is
gofmt-ed and passes go vet."""

from __future__ import annotations

import subprocess

from google.protobuf import descriptor_pb2

from tests.clients.client_process import REPO
from tests.clients.go_client import CLIENT_DIR, go
from tests.clients.ts_client import install_packages, tsc


def test_generated_typescript_typechecks() -> None:
    # Installs the pinned npm packages when clients/ts/package-lock.json changed (cached).
    install_packages()
    tsc("-p", "clients/ts", cwd=REPO)


def test_go_client_is_formatted_and_vetted() -> None:
    gofmt = subprocess.run(
        ["gofmt", "-l", "."],
        cwd=CLIENT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert gofmt.returncode == 0 and gofmt.stdout == "", f"not gofmt-ed: {gofmt.stdout}"
    vet = go("vet", "./...")
    assert vet.returncode == 0, vet.stderr


# Services of the internal package (proto/chatplane/internal/v1): never in customers' clients.
INTERNAL_SERVICES = (
    "AgentService",
    "MemoryService",
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
    "PersistenceService",
)


def test_generated_clients_hold_only_the_public_package() -> None:
    """gen/go, gen/ts and the edge's descriptor set are generated from chatplane.v1 alone."""
    generated = sorted(
        path
        for folder in ("gen/go", "gen/ts")
        for path in (REPO / folder).rglob("*")
        if path.is_file() and path.suffix in {".go", ".ts"}
    )
    assert generated, "no generated Go or TypeScript found"
    for path in generated:
        relative = path.relative_to(REPO).as_posix()
        assert "/internal/" not in relative, relative
        text = path.read_text()
        assert "chatplane.internal" not in text, relative
        for service in INTERNAL_SERVICES:
            # Go: `type AgentServiceClient`, `AgentService_Generate_FullMethodName`;
            # TypeScript: `export const AgentService`, the descriptor's `chatplane.v1.AgentService`.
            for needle in (f"{service}Client", f"{service}_", f"const {service}", f".{service}"):
                assert needle not in text, f"{relative} has {needle}"
    contracts = descriptor_pb2.FileDescriptorSet.FromString(
        (REPO / "gen" / "descriptors" / "chatplane.binpb").read_bytes()
    )
    chatplane_files = [f for f in contracts.file if f.name.startswith("chatplane/")]
    assert chatplane_files
    assert {f.package for f in chatplane_files} == {"chatplane.v1"}
    services = {s.name for f in chatplane_files for s in f.service}
    assert services == {"GatewayService", "AdminService", "OperatorService", "RegistryService"}
