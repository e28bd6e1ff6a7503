"""Every shell block of the README, and the blocks of docs/*.md marked to run, run as printed
against one fresh stack started the way `make run` starts it (tests/docs/shell_blocks.py says
how blocks are marked and what "as printed" checks).

The stack is `.venv/bin/chatplane up` in a scratch checkout: every top-level entry of the
repository is linked into it except `clients/` (copied: the README builds the Go client
there), `.venv` is this interpreter's environment and `.chatplane/` a new data dir, so the
commands run from the checkout's root exactly as a reader types them. Two things differ from
a reader's `make run`, on purpose: the services listen on free ports (the addresses the
README prints, `chatplane up`'s defaults, are replaced by the real ones in the commands) and
the offline model answers at 400 tokens per second instead of 40."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from chatplane.cli.main import up
from tests.clients.client_process import REPO
from tests.clients.go_client import go_env
from tests.docs.shell_blocks import ShellBlock, block_script, runnable_blocks

pytestmark = pytest.mark.integration

_READY_SECONDS = 120.0
_BLOCK_SECONDS = 240.0
# Copied rather than linked: the README writes into them.
_COPIED = frozenset({"clients"})
# What the README's commands must print, beyond their exit status: (a command containing
# this, prints this). Each must match at least one command.
README_OUTPUTS = (
    (".venv/bin/chatplane chat -m", "[offline model]"),
    ("variants list", "support@2"),
    ("eval --variant support@1 ", "gate: passed"),
    ("eval --variant support@2 ", "gate: FAILED"),
    ("curl -N", 'data: {"done"'),
    ('-message "hello"', "[offline model]"),
)


def default_address(option: str) -> str:
    """`127.0.0.1:<default>` of a port option of `chatplane up`: what the README prints."""
    for param in up.params:
        if isinstance(param, click.Option) and param.name == option:
            return f"127.0.0.1:{param.default}"
    raise AssertionError(f"`chatplane up` has no option {option!r}")


@dataclass(frozen=True)
class Checkout:
    """The scratch checkout, the stack running in it and the environment a reader has."""

    root: Path
    substitutions: dict[str, str]
    env: dict[str, str]


def scratch_checkout(root: Path) -> None:
    """The repository as a reader's checkout after `make run`'s install, in `root`."""
    root.mkdir()
    for entry in REPO.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.name in _COPIED:
            shutil.copytree(entry, root / entry.name, symlinks=True)
        else:
            (root / entry.name).symlink_to(entry)
    venv = Path(sys.prefix)
    if not (venv / "bin" / "chatplane").exists():
        pytest.fail(f"no `chatplane` in {venv}: run the tests from the project's venv (make test)")
    (root / ".venv").symlink_to(venv)


def reader_env() -> dict[str, str]:
    """This process's environment without settings that would point the CLI elsewhere, with
    the Go caches the suite shares (a first build would otherwise download modules)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPLANE_") and k != "KEY"}
    caches = go_env()
    env.update({name: caches[name] for name in ("GOCACHE", "GOMODCACHE", "GOFLAGS")})
    return env


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Checkout]:
    """`make run`'s `chatplane up` in a scratch checkout, until the module's tests end."""
    root = tmp_path_factory.mktemp("docs") / "chatplane"
    scratch_checkout(root)
    env = reader_env()
    stack_env = {
        **env,
        "PYTHONUNBUFFERED": "1",
        "CHATPLANE_LLM_BACKEND": "offline",
        "CHATPLANE_OFFLINE_TOKENS_PER_SECOND": "400",
        "CHATPLANE_OFFLINE_FIRST_TOKEN_SECONDS": "0.02",
    }
    process = subprocess.Popen(
        [".venv/bin/chatplane", "up", "--port", "0", "--edge-port", "0"],
        cwd=root,
        env=stack_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    output = ""
    try:
        deadline = time.monotonic() + _READY_SECONDS
        while "stop:" not in output:
            line = process.stdout.readline()
            assert line, f"chatplane up exited:\n{output}"
            assert time.monotonic() < deadline, f"chatplane up not ready:\n{output}"
            output += line
        gateway = re.search(r"gRPC on (\S+)", output)
        edge = re.search(r"Envoy \(HTTP\):\s+http://(\S+)", output)
        assert gateway and edge, output
        yield Checkout(
            root,
            {
                default_address("port"): gateway.group(1),
                default_address("edge_port"): edge.group(1),
            },
            env,
        )
    finally:
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=90)
    assert process.returncode == 0, output + rest


@dataclass(frozen=True)
class CommandRun:
    """A command as printed and what it wrote."""

    text: str
    output: str


def run_document(checkout: Checkout, path: Path, *, run_unmarked: bool) -> list[CommandRun]:
    """Runs the document's runnable blocks in order in one simulated terminal; fails at the
    first command that does not end as documented."""
    state = checkout.root.parent / f"terminal-{path.stem}"
    state.mkdir()
    (state / "cwd").write_text(str(checkout.root))
    runs: list[CommandRun] = []
    for block in runnable_blocks(path, run_unmarked=run_unmarked):
        runs += run_block(checkout, block, state)
    return runs


def run_block(checkout: Checkout, block: ShellBlock, state: Path) -> list[CommandRun]:
    """One block; its commands' outputs."""
    script = state / "block.sh"
    script.write_text(block_script(block, state, checkout.substitutions))
    commands = block.commands()
    try:
        finished = subprocess.run(
            ["bash", str(script)],
            input=block.stdin,
            env=checkout.env,
            capture_output=True,
            text=True,
            timeout=_BLOCK_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.where}: the block did not finish in {_BLOCK_SECONDS:.0f} s")
    outputs = [
        (state / f"{n}.out").read_text(errors="replace") if (state / f"{n}.out").exists() else ""
        for n in range(len(commands))
    ]
    if (state / "failed").exists():
        number, status = map(int, (state / "failed").read_text().split())
        command = commands[number]
        pytest.fail(
            f"{block.path.name}:{command.line}: `{command.text}` exited {status}, "
            f"documented {command.expected_status}:\n{outputs[number][-4000:]}",
            pytrace=False,
        )
    assert finished.returncode == 0, f"{block.where}: {finished.stderr[-4000:]}"
    return [CommandRun(c.text, out) for c, out in zip(commands, outputs, strict=True)]


def test_readme_commands_run_as_printed(checkout: Checkout) -> None:
    runs = run_document(checkout, REPO / "README.md", run_unmarked=True)
    for fragment, printed in README_OUTPUTS:
        matching = [run for run in runs if fragment in run.text]
        assert matching, f"no README command contains {fragment!r}"
        for run in matching:
            assert printed in run.output, f"`{run.text}` did not print {printed!r}:\n{run.output}"


@pytest.mark.parametrize(
    "document",
    sorted(p.name for p in (REPO / "docs").glob("*.md") if runnable_blocks(p, run_unmarked=False)),
)
def test_docs_blocks_marked_runnable_run_as_printed(checkout: Checkout, document: str) -> None:
    assert run_document(checkout, REPO / "docs" / document, run_unmarked=False)
