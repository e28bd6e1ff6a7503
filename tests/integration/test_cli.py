"""Integration tests of the `chatplane` command against the real four-process stack: one
question with `chat -m`, errors, `history`, `keys create`, and an interactive session in tmux."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from chatplane.cli.chat import (
    TurnResult,
    connect,
    describe_rpc_error,
    retry_delay,
    stream_answer,
)
from chatplane.cli.client import ClientTarget
from chatplane.cli.history import read_conversation
from chatplane.launcher import Stack
from chatplane.v1 import gateway_pb2, resources_pb2

pytestmark = pytest.mark.integration

_SCRIPT = Path(sys.executable).with_name("chatplane")
CHATPLANE = (
    [str(_SCRIPT)]
    if _SCRIPT.exists()
    else [sys.executable, "-c", "from chatplane.cli.main import main; main()"]
)
CLI_TIMEOUT = 60.0
OFFLINE_LABEL = "[offline model]"
# Variables of the developer's shell that would point the CLI elsewhere.
_CLIENT_VARIABLES = ("CHATPLANE_API_KEY", "CHATPLANE_GATEWAY_ADDRESS", "CHATPLANE_DATA_DIR")


@dataclass(frozen=True)
class RunningStack:
    """A started stack: its data dir (which the CLI reads) and the development key."""

    data_dir: Path
    address: str
    dev_key: str


def stack_env(tokens_per_second: float) -> dict[str, str]:
    """The test process's environment with a fast offline model."""
    env = {k: v for k, v in os.environ.items() if k not in _CLIENT_VARIABLES}
    env["CHATPLANE_OFFLINE_TOKENS_PER_SECOND"] = str(tokens_per_second)
    env["CHATPLANE_OFFLINE_FIRST_TOKEN_SECONDS"] = "0.05"
    # A developer's own ANTHROPIC_API_KEY would otherwise make these answers Claude's.
    env["CHATPLANE_LLM_BACKEND"] = "offline"
    return env


async def start_stack(data_dir: Path, tokens_per_second: float) -> AsyncIterator[RunningStack]:
    """Starts the four services on free ports; stops them afterwards."""
    ports = {"gateway": 0, "agent": 0, "memory": 0, "persistence": 0}
    stack = Stack(data_dir=data_dir, ports=ports, env=stack_env(tokens_per_second))
    info = await stack.start()
    try:
        yield RunningStack(stack.data_dir, info.address("gateway"), await stack.development_key())
    finally:
        codes = await stack.stop()
        assert all(code == 0 for code in codes.values()), codes


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningStack]:
    """The stack most tests share, answering at 400 tokens per second."""
    async for running in start_stack(tmp_path_factory.mktemp("cli-stack"), 400):
        yield running


def cli(
    data_dir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs `chatplane --data-dir DATA_DIR ARGS` and returns what it did."""
    environment = {k: v for k, v in os.environ.items() if k not in _CLIENT_VARIABLES}
    environment.update(env or {})
    return subprocess.run(
        [*CHATPLANE, "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def conversation_id_of(result: subprocess.CompletedProcess[str]) -> str:
    """The conversation id from the footer `chat -m` prints to stderr."""
    match = re.search(r"conversation (\S+)", result.stderr)
    assert match, result.stderr
    return match.group(1)


def eventually(
    check: Callable[[], subprocess.CompletedProcess[str]],
    accept: Callable[[subprocess.CompletedProcess[str]], bool],
    deadline_seconds: float = 20.0,
) -> subprocess.CompletedProcess[str]:
    """Repeats `check` until `accept` holds (history is written by the log consumer, a moment
    after the answer ends) or the deadline passes; returns the last result."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        result = check()
        if accept(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


@pytest.fixture(scope="module")
def first_turn(stack: RunningStack) -> subprocess.CompletedProcess[str]:
    """`chatplane chat -m hello` with the development key."""
    return cli(stack.data_dir, "chat", "-m", "hello")


def test_chat_message_prints_the_streamed_answer(
    first_turn: subprocess.CompletedProcess[str],
) -> None:
    assert first_turn.returncode == 0, first_turn.stderr
    assert first_turn.stdout.startswith(OFFLINE_LABEL)
    assert 'You asked: "hello"' in first_turn.stdout
    assert "chatplane-offline-1" in first_turn.stderr
    assert conversation_id_of(first_turn)


def test_chat_continues_a_conversation(
    stack: RunningStack, first_turn: subprocess.CompletedProcess[str]
) -> None:
    conversation_id = conversation_id_of(first_turn)
    result = cli(stack.data_dir, "chat", "--conversation", conversation_id, "-m", "and again")
    assert result.returncode == 0, result.stderr
    assert conversation_id_of(result) == conversation_id
    assert "Earlier in this conversation" in result.stdout or "From memory" in result.stdout


def test_chat_with_a_bad_key_fails_with_one_line(stack: RunningStack) -> None:
    result = cli(stack.data_dir, "chat", "--api-key", "cp_nosuchkey_secret", "-m", "hello")
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.strip() == "error: UNAUTHENTICATED: invalid api key"


def test_chat_without_a_gateway_fails_with_unavailable(tmp_path: Path) -> None:
    env = {"CHATPLANE_GATEWAY_ADDRESS": "127.0.0.1:1", "CHATPLANE_API_KEY": "cp_x_y"}
    result = cli(tmp_path, "chat", "-m", "hello", env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("error: UNAVAILABLE: ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_history_lists_the_conversation(
    stack: RunningStack, first_turn: subprocess.CompletedProcess[str]
) -> None:
    conversation_id = conversation_id_of(first_turn)
    result = eventually(
        lambda: cli(stack.data_dir, "history"), lambda r: conversation_id in r.stdout
    )
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["CONVERSATION", "UPDATED", "MESSAGES", "TITLE"]
    row = next(r for r in rows if r.startswith(conversation_id))
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+\d+\s+hello", row), row


def test_history_of_a_conversation_shows_both_messages(
    stack: RunningStack, first_turn: subprocess.CompletedProcess[str]
) -> None:
    conversation_id = conversation_id_of(first_turn)
    result = eventually(
        lambda: cli(stack.data_dir, "history", conversation_id),
        lambda r: r.returncode == 0 and OFFLINE_LABEL in r.stdout,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    headings = [line for line in lines if line.startswith(("user · ", "assistant · "))]
    assert headings[0].startswith("user · ")
    assert headings[1].startswith("assistant · ") and "chatplane-offline-1" in headings[1]
    assert "  hello" in lines
    assert any(line.startswith(f"  {OFFLINE_LABEL}") for line in lines)


def test_history_of_an_unknown_conversation_is_not_found(stack: RunningStack) -> None:
    result = cli(stack.data_dir, "history", "no-such-conversation")
    assert result.returncode == 1
    assert result.stderr.startswith("error: NOT_FOUND: ") or result.stderr.startswith(
        "error: INVALID_ARGUMENT: "
    )


def test_a_created_key_works_with_chat(stack: RunningStack) -> None:
    created = cli(stack.data_dir, "keys", "create", "--tenant", "t", "--user", "u")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("cp_") and key != stack.dev_key
    result = cli(stack.data_dir, "chat", "-m", "hello", env={"CHATPLANE_API_KEY": key})
    assert result.returncode == 0, result.stderr
    assert OFFLINE_LABEL in result.stdout
    conversation_id = conversation_id_of(result)
    # The conversation is the new user's: listed with the new key, not with the dev key.
    listing = eventually(
        lambda: cli(stack.data_dir, "history", "--api-key", key),
        lambda r: conversation_id in r.stdout,
    )
    assert conversation_id in listing.stdout, listing.stdout + listing.stderr
    assert conversation_id not in cli(stack.data_dir, "history").stdout


def test_rate_limited_error_shows_the_retry_delay(stack: RunningStack) -> None:
    created = cli(stack.data_dir, "keys", "create", "--tenant", "t", "--user", "busy")
    target = ClientTarget(address=stack.address, api_key=created.stdout.strip())

    async def exhaust_then_chat() -> grpc.aio.AioRpcError:
        async with connect(target) as gateway:
            for _ in range(40):
                try:
                    await gateway.stub.ListConversations(
                        gateway_pb2.ListConversationsRequest(),
                        metadata=gateway.metadata,
                        timeout=10,
                    )
                except grpc.aio.AioRpcError as error:
                    if error.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stream_answer(gateway, "hello", "", lambda _: None)
        return raised.value

    error = asyncio.run(exhaust_then_chat())
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    delay = retry_delay(error)
    assert delay is not None and 0 < delay <= 60
    line = describe_rpc_error(error)
    assert line.startswith("RESOURCE_EXHAUSTED: ")
    assert line.endswith(f"(retry in {delay:.1f} s)")


def test_stream_answer_carries_the_conversation(stack: RunningStack) -> None:
    target = ClientTarget(address=stack.address, api_key=stack.dev_key)
    deltas: list[str] = []

    async def two_turns() -> tuple[str, str, str]:
        async with connect(target) as gateway:
            first = await stream_answer(gateway, "remember blue", "", deltas.append)
            second = await stream_answer(
                gateway, "what colour?", first.conversation_id, lambda _: None
            )
        return first.conversation_id, second.conversation_id, first.text

    first_id, second_id, text = asyncio.run(two_turns())
    assert first_id and second_id == first_id
    assert "".join(deltas) == text and text.startswith(OFFLINE_LABEL)


# --- the interactive session, driven through a terminal multiplexer ---------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def slow_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningStack]:
    """A stack whose offline model writes 12 tokens per second, so an answer can be cut."""
    async for running in start_stack(tmp_path_factory.mktemp("cli-slow-stack"), 12):
        yield running


def test_stream_answer_interrupt_keeps_the_partial_answer(slow_stack: RunningStack) -> None:
    target = ClientTarget(address=slow_stack.address, api_key=slow_stack.dev_key)

    async def interrupted_turn() -> tuple[TurnResult, list[resources_pb2.Message]]:
        interrupt = asyncio.Event()
        deltas: list[str] = []

        def on_delta(piece: str) -> None:
            deltas.append(piece)
            if len(deltas) == 3:
                interrupt.set()

        async with connect(target) as gateway:
            result = await stream_answer(
                gateway, "a long question", "", on_delta, interrupt=interrupt
            )
            deadline = time.monotonic() + 20
            while True:
                try:
                    _, messages = await read_conversation(gateway, result.conversation_id)
                except grpc.aio.AioRpcError as error:
                    if error.code() is not grpc.StatusCode.NOT_FOUND:
                        raise
                    messages = []
                if len(messages) == 2 or time.monotonic() > deadline:
                    return result, messages
                await asyncio.sleep(0.2)

    result, messages = asyncio.run(interrupted_turn())
    assert result.interrupted and result.conversation_id
    assert result.text.startswith("[offline") and result.usage is None
    assert [m.role for m in messages] == [resources_pb2.ROLE_USER, resources_pb2.ROLE_ASSISTANT]
    assert messages[1].status == resources_pb2.MESSAGE_STATUS_INTERRUPTED
    assert messages[1].text.startswith(result.text)


_EXITED = "[command exited with status]"


class Terminal:
    """One tmux pane on a private tmux server (own socket and config in `workdir`), running a
    command."""

    def __init__(self, command: list[str], env: dict[str, str], workdir: Path) -> None:
        self.socket = workdir / "tmux.sock"
        self._env = env
        # remain-on-exit keeps the pane, and so the command's last words, after it ends.
        config = workdir / "tmux.conf"
        config.write_text("set-option -g remain-on-exit on\nset-option -g history-limit 5000\n")
        # bash prints the exit status: tmux's own #{pane_dead_status} is sometimes never set
        # (the exited process stays a zombie), and bash, unlike dash, survives the Ctrl-C its
        # child handles (it waits and exits only when the child died of the signal).
        script = f'{shlex.join(command)}; echo "{_EXITED} $?"'
        size = ("-x", "200", "-y", "50")
        self._tmux(
            "-f", str(config), "new-session", "-d", "-s", "chat", *size, "bash", "-c", script
        )

    def _tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-S", str(self.socket), *args],
            capture_output=True,
            text=True,
            check=True,
            env=self._env,
        ).stdout

    def send(self, *keys: str) -> None:
        """Types keys (tmux key names, e.g. "Enter", "C-c")."""
        self._tmux("send-keys", "-t", "chat", *keys)

    def type_line(self, text: str) -> None:
        """Types `text` literally, then Enter."""
        self._tmux("send-keys", "-t", "chat", "-l", text)
        self.send("Enter")

    def screen(self) -> str:
        """The pane's text with its scrollback, wrapped lines joined."""
        return self._tmux("capture-pane", "-p", "-J", "-S", "-1000", "-t", "chat")

    def exit_status(self) -> int | None:
        """The command's exit status, or None while it runs."""
        match = re.search(rf"^{re.escape(_EXITED)} (\d+)$", self.screen(), re.MULTILINE)
        return int(match.group(1)) if match else None

    def wait_for(self, predicate: Callable[[str], bool], what: str, seconds: float = 30) -> str:
        """Polls the screen until `predicate` holds; fails with the screen after `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            screen = self.screen()
            if predicate(screen):
                return screen
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}; the screen:\n{screen}")
            time.sleep(0.1)

    def close(self) -> None:
        """Stops this tmux server (only ours: it has its own socket)."""
        subprocess.run(["tmux", "-S", str(self.socket), "kill-server"], check=False)


@pytest.fixture
def terminal(slow_stack: RunningStack, tmp_path: Path) -> Iterator[Terminal]:
    """`chatplane chat` running in a fresh tmux pane against the slow stack."""
    if shutil.which("tmux") is None or shutil.which("bash") is None:
        pytest.skip(
            "tmux (and bash) are needed to drive the interactive chat: apt-get install tmux"
        )
    env = {k: v for k, v in os.environ.items() if k not in _CLIENT_VARIABLES}
    term = Terminal([*CHATPLANE, "--data-dir", str(slow_stack.data_dir), "chat"], env, tmp_path)
    try:
        yield term
    finally:
        term.close()


def _after(screen: str, marker: str) -> str:
    """The screen after the last `marker`; empty while the marker is not on it."""
    _, found, after = screen.rpartition(marker)
    return after if found else ""


def _last_line(screen: str) -> str:
    lines = [line.rstrip() for line in screen.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def test_interactive_chat_streams_and_ctrl_c_cancels_only_the_answer(
    terminal: Terminal, slow_stack: RunningStack
) -> None:
    terminal.wait_for(lambda s: _last_line(s) == "you>", "the first prompt")

    terminal.type_line("hello")
    screen = terminal.wait_for(
        lambda s: "chatplane-offline-1 ·" in s and _last_line(s) == "you>",
        "the first answer and the next prompt",
    )
    assert OFFLINE_LABEL in screen
    first_footer = next(line for line in screen.splitlines() if "chatplane-offline-1 ·" in line)
    conversation_id = first_footer.rsplit("conversation ", 1)[1].strip()

    question = "tell me everything you remember"
    terminal.type_line(question)
    terminal.wait_for(
        lambda s: OFFLINE_LABEL in _after(s, f"you> {question}"),
        "the second answer to start",
    )
    terminal.send("C-c")
    screen = terminal.wait_for(
        lambda s: "[interrupted; the partial answer is kept]" in s and _last_line(s) == "you>",
        "the interrupted answer and the prompt",
    )
    assert terminal.exit_status() is None, "Ctrl-C during an answer must not end the program"
    second_footer = [line for line in screen.splitlines() if line.strip()][-2]
    assert second_footer.endswith(f"conversation {conversation_id}"), second_footer
    assert "tokens" not in second_footer  # cancelled before the usage event

    # Ctrl-C at the prompt drops the typed line and keeps running.
    terminal.send("-l", "never sent")
    terminal.send("C-c")
    terminal.wait_for(lambda s: _last_line(s) == "you>", "a clean prompt after Ctrl-C")
    assert terminal.exit_status() is None

    terminal.type_line("/help")
    terminal.wait_for(lambda s: "/new" in s and _last_line(s) == "you>", "the help")
    terminal.type_line("/quit")
    deadline = time.monotonic() + 10
    while terminal.exit_status() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert terminal.exit_status() == 0

    history_file = slow_stack.data_dir / "chat-history"
    assert f"+{question}" in history_file.read_text()
    assert "never sent" not in history_file.read_text()

    # The server kept the partial answer, marked interrupted.
    result = eventually(
        lambda: cli(slow_stack.data_dir, "history", conversation_id),
        lambda r: "INTERRUPTED" in r.stdout,
    )
    assert "INTERRUPTED (partial answer)" in result.stdout, result.stdout + result.stderr
    assert f"  {question}" in result.stdout
