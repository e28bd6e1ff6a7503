"""The generated TypeScript (gen/ts) type-checks against the pinned @bufbuild/protobuf runtime,
and its GatewayService descriptor has what @connectrpc/connect needs (clients/ts/check.ts).
The Go code (gen/go) is compiled by every test that builds clients/go; the Go client is
gofmt-ed and passes go vet."""

from __future__ import annotations

import subprocess

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
