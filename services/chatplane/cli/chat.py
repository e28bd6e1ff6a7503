"""`chatplane chat`: ask the Gateway one question (`-m`) or hold an interactive session in the
terminal, with the answer printed as it streams and Ctrl-C cancelling only the current answer."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, TextIO, cast

import click
import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory
from rich.console import Console
from rich.markup import escape

from chatplane.cli.client import ClientTarget, gateway_options, tls_files
from chatplane.cli.resume import RESUMABLE_CODES, cancel_generation, resume_stream
from chatplane.common.timestamps import seconds_of
from chatplane.v1 import gateway_pb2, gateway_pb2_grpc, resources_pb2

CHAT_TIMEOUT_SECONDS = 300.0
HISTORY_FILE = "chat-history"
PROMPT = "you> "
_SNIPPET_CHARS = 100
COMMANDS = {
    "/new": "start a new conversation",
    "/help": "list these commands",
    "/quit": "leave (Ctrl-D works too)",
}
_FINISH_NOTES = {
    resources_pb2.FINISH_REASON_MAX_TOKENS: "answer cut at the token limit",
    resources_pb2.FINISH_REASON_INTERRUPTED: "answer interrupted; the partial answer is kept",
    resources_pb2.FINISH_REASON_ERROR: "the model failed mid-answer; the partial answer is kept",
}


@dataclass(frozen=True, slots=True)
class Gateway:
    """An open channel to the Gateway together with the caller's credentials."""

    stub: gateway_pb2_grpc.GatewayServiceAsyncStub
    metadata: tuple[tuple[str, str], ...]


@contextlib.asynccontextmanager
async def connect(target: ClientTarget) -> AsyncIterator[Gateway]:
    """A Gateway connection for the lifetime of the block."""
    async with target.channel() as channel:
        yield Gateway(gateway_pb2_grpc.GatewayServiceStub(channel), target.metadata)


@dataclass(slots=True)
class TurnResult:
    """What one Chat call produced; `interrupted` is set when the caller cancelled it."""

    conversation_id: str = ""
    user_message_id: str = ""
    assistant_message_id: str = ""
    model: str = ""
    text: str = ""
    replayed: bool = False
    memory_degraded: bool = False
    citations: list[resources_pb2.Citation] = field(default_factory=list)
    usage: resources_pb2.Usage | None = None
    finish_reason: resources_pb2.FinishReason.ValueType = resources_pb2.FINISH_REASON_UNSPECIFIED
    interrupted: bool = False
    # The sequence of the last delta received (where a resume continues).
    last_sequence: int = 0


async def stream_answer(
    gateway: Gateway,
    text: str,
    conversation_id: str,
    on_delta: Callable[[str], None],
    *,
    client_message_id: str | None = None,
    interrupt: asyncio.Event | None = None,
    call_timeout: float = CHAT_TIMEOUT_SECONDS,
) -> TurnResult:
    """Sends `text` and streams the answer, calling `on_delta` per piece of text.

    The answer is resumable: a stream that drops after the answer started is continued with
    ResumeChat from the last delta received. Setting `interrupt` cancels the call and stops
    the generation (CancelChat, once the answer's id is known; the server keeps the partial
    answer as interrupted) and returns what arrived so far with `interrupted=True`. gRPC
    failures raise `grpc.aio.AioRpcError`; cancelling the calling task cancels the call too.
    """
    request = gateway_pb2.ChatRequest(
        conversation_id=conversation_id,
        text=text,
        client_message_id=client_message_id or str(uuid.uuid4()),
        resumable=True,
    )
    result = TurnResult(conversation_id=conversation_id)
    call = gateway.stub.Chat(request, metadata=gateway.metadata, timeout=call_timeout)
    watcher = None if interrupt is None else asyncio.ensure_future(interrupt.wait())
    if watcher is not None:
        # Before `started` there is no id to cancel the generation by: stop once it comes.
        watcher.add_done_callback(lambda _: result.assistant_message_id and call.cancel())
    try:
        try:
            async for response in call:
                _apply(result, response, on_delta)
                if interrupt is not None and interrupt.is_set():
                    call.cancel()
        except grpc.aio.AioRpcError as error:
            if not result.assistant_message_id or error.code() not in RESUMABLE_CODES:
                raise
        if result.finish_reason == resources_pb2.FINISH_REASON_UNSPECIFIED and (
            result.assistant_message_id
        ):
            # The stream ended before `done`: the rest comes from the same generation.
            await resume_stream(
                gateway.stub,
                gateway.metadata,
                result.assistant_message_id,
                lambda: result.last_sequence,
                lambda event: _apply_resumed(result, event, on_delta),
                timeout=call_timeout,
            )
    except asyncio.CancelledError:
        call.cancel()
        # grpc raises CancelledError in the reading task when the call itself is cancelled;
        # only an interrupt we asked for is an answer, a cancelled task must stay cancelled.
        current = asyncio.current_task()
        if interrupt is None or not interrupt.is_set() or (current and current.cancelling()):
            raise
        result.interrupted = True
        if result.assistant_message_id:
            await cancel_generation(gateway.stub, gateway.metadata, result.assistant_message_id)
    finally:
        if watcher is not None:
            watcher.cancel()
    return result


def _apply_resumed(
    result: TurnResult,
    response: gateway_pb2.ResumeChatResponse,
    on_delta: Callable[[str], None],
) -> None:
    # The resumed stream's `started` repeats what the first one said (less memory_degraded).
    if response.WhichOneof("event") != "started":
        _apply(result, response, on_delta)


def _apply(
    result: TurnResult,
    response: gateway_pb2.ChatResponse | gateway_pb2.ResumeChatResponse,
    on_delta: Callable[[str], None],
) -> None:
    event = response.WhichOneof("event")
    if event == "started":
        started = response.started
        result.conversation_id = started.conversation_id
        result.user_message_id = started.user_message_id
        result.assistant_message_id = started.assistant_message_id
        result.model = started.model
        result.replayed = started.replayed
        result.memory_degraded = started.memory_degraded
    elif event == "delta":
        result.text += response.delta.text
        result.last_sequence = response.delta.sequence
        on_delta(response.delta.text)
    elif event == "citation":
        result.citations.append(response.citation)
    elif event == "usage":
        result.usage = response.usage
    elif event == "done":
        result.finish_reason = response.done.finish_reason
        result.model = response.done.model or result.model


def describe_rpc_error(error: grpc.aio.AioRpcError) -> str:
    """One line for a failed call: `CODE: details`, with the retry delay when rate limited."""
    code = error.code()
    line = f"{code.name}: {' '.join((error.details() or code.name.lower()).split())}"
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        delay = retry_delay(error)
        if delay is not None:
            line += f" (retry in {delay:.1f} s)"
    return line


def retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    """Seconds from the `google.rpc.RetryInfo` detail of a failed call, if it has one."""
    try:
        # AioRpcError has the methods from_call reads (code, details, trailing_metadata).
        status = rpc_status.from_call(cast(grpc.Call, error))
    except ValueError:
        return None
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return seconds_of(info.retry_delay)
    return None


def error_exit(message: str) -> NoReturn:
    """Prints `error: MESSAGE` to stderr and exits with status 1."""
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@click.command(short_help="Chat with the assistant (one question with -m).")
@gateway_options
@click.option(
    "--conversation", "conversation_id", default="", metavar="ID", help="Continue a conversation."
)
@click.option(
    "-m", "--message", metavar="TEXT", help="Ask one question, print the answer and exit."
)
@click.pass_obj
def chat(
    data_dir: Path,
    address: str | None,
    api_key: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
    conversation_id: str,
    message: str | None,
) -> None:
    """Chat with the assistant: one question with -m, otherwise an interactive session
    (Ctrl-C stops the answer being written, Ctrl-D or /quit leaves)."""
    target = ClientTarget.resolve(data_dir, address, api_key, tls_files(tls_cert, tls_key, tls_ca))
    if message is not None:
        try:
            asyncio.run(_answer_once(target, message, conversation_id))
        except grpc.aio.AioRpcError as error:
            error_exit(describe_rpc_error(error))
        except KeyboardInterrupt:
            click.echo("\ninterrupted", err=True)
            sys.exit(130)
        return
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(ChatSession(target, data_dir / HISTORY_FILE, conversation_id).run())


async def _answer_once(target: ClientTarget, text: str, conversation_id: str) -> None:
    out = sys.stdout

    def write(piece: str) -> None:
        out.write(piece)
        out.flush()

    async with connect(target) as gateway:
        try:
            result = await stream_answer(gateway, text, conversation_id, write)
        except grpc.aio.AioRpcError:
            write("\n" if out.isatty() else "")
            raise
    if not result.text.endswith("\n"):
        write("\n")
    # The answer alone goes to stdout; how to continue goes to stderr, for scripts.
    _print_footer(Console(stderr=True, highlight=False, soft_wrap=True), result)


def _print_footer(console: Console, result: TurnResult) -> None:
    note = _FINISH_NOTES.get(result.finish_reason)
    if result.interrupted:
        note = "interrupted; the partial answer is kept"
    if note:
        console.print(f"[{note}]", style="yellow", markup=False)
    if result.citations:
        console.print("sources:", style="dim")
        for number, citation in enumerate(result.citations, start=1):
            kind = "document" if citation.kind == resources_pb2.CITATION_KIND_DOCUMENT else "turn"
            snippet = " ".join(citation.snippet.split())
            if len(snippet) > _SNIPPET_CHARS:
                snippet = snippet[: _SNIPPET_CHARS - 1] + "…"
            label = citation.title or citation.source_id
            if citation.document_id:  # rag: which chunk of the document
                label = f"{label}, chunk {citation.chunk_index + 1}"
            console.print(f"  [{number}] {label} ({kind}): {snippet}", style="dim", markup=False)
    parts = [result.model or "unknown model"]
    if result.usage is not None:
        parts.append(f"{result.usage.input_tokens} in / {result.usage.output_tokens} out tokens")
    if result.replayed:
        parts.append("replayed")
    if result.conversation_id:
        parts.append(f"conversation {result.conversation_id}")
    console.print(" · ".join(parts), style="dim", markup=False)


@contextlib.contextmanager
def _sigint_sets(event: asyncio.Event) -> Iterator[None]:
    """While the block runs, Ctrl-C (SIGINT) sets `event` instead of interrupting Python."""
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGINT)
    loop.add_signal_handler(signal.SIGINT, event.set)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        signal.signal(signal.SIGINT, previous)


class ChatSession:
    """The interactive loop: prompt, stream the answer, repeat; one conversation at a time."""

    def __init__(
        self,
        target: ClientTarget,
        history_path: Path,
        conversation_id: str = "",
        *,
        console: Console | None = None,
        out: TextIO | None = None,
    ) -> None:
        self._target = target
        self._history_path = history_path
        self.conversation_id = conversation_id
        self._console = console or Console(highlight=False, soft_wrap=True)
        self._out = out or sys.stdout

    async def run(self) -> None:
        """Runs until Ctrl-D or /quit."""
        self._history_path.parent.mkdir(parents=True, exist_ok=True)
        session: PromptSession[str] = PromptSession(
            history=FileHistory(str(self._history_path)), multiline=False
        )
        self._console.print(
            f"chatplane chat: connected to {escape(self._target.address)}. "
            "Type /help for commands, Ctrl-D to quit.",
            style="dim",
        )
        if self.conversation_id:
            self._console.print(f"continuing conversation {self.conversation_id}", style="dim")
        async with connect(self._target) as gateway:
            while True:
                try:
                    line = await session.prompt_async(PROMPT)
                except KeyboardInterrupt:
                    continue  # Ctrl-C at the prompt drops the line
                except EOFError:
                    break
                text = line.strip()
                if not text:
                    continue
                if text.startswith("/"):
                    if not self._command(text):
                        break
                    continue
                await self.turn(gateway, text)

    def _command(self, text: str) -> bool:
        """Runs a slash command; False means leave."""
        command = text.split(maxsplit=1)[0].lower()
        if command in ("/quit", "/exit"):
            return False
        if command == "/new":
            self.conversation_id = ""
            self._console.print("new conversation", style="dim")
        elif command == "/help":
            for name, description in COMMANDS.items():
                self._console.print(f"  {name:<7} {description}", markup=False)
            self._console.print("  Ctrl-C  stop the answer being written", markup=False)
        else:
            self._console.print(
                f"unknown command {text.split(maxsplit=1)[0]}; try /help", style="yellow"
            )
        return True

    async def turn(self, gateway: Gateway, text: str) -> TurnResult | None:
        """One message and its streamed answer; None when the call failed."""
        interrupt = asyncio.Event()
        status = self._console.status("thinking…", spinner="dots")
        status.start()
        spinning = True

        def on_delta(piece: str) -> None:
            nonlocal spinning
            if spinning:
                status.stop()
                spinning = False
            self._out.write(piece)
            self._out.flush()

        try:
            with _sigint_sets(interrupt):
                result = await stream_answer(
                    gateway, text, self.conversation_id, on_delta, interrupt=interrupt
                )
        except grpc.aio.AioRpcError as error:
            if not spinning:
                self._out.write("\n")
            self._console.print(f"error: {describe_rpc_error(error)}", style="red", markup=False)
            return None
        finally:
            if spinning:
                status.stop()
        if result.text and not result.text.endswith("\n"):
            self._out.write("\n")
            self._out.flush()
        if result.conversation_id:
            self.conversation_id = result.conversation_id
        if result.memory_degraded:
            self._console.print(
                "memory unavailable: answered without recalled context", style="dim"
            )
        _print_footer(self._console, result)
        return result
