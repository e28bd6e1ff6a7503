"""The shell blocks of the README and of docs/*.md, as the documentation test runs them.

A shell block is a fenced block whose language is `sh`, `bash` or `shell`. Every shell block
of README.md runs; a block of docs/*.md runs only when marked. A marker is an HTML comment on
the line just before the fence (invisible on GitHub):

    <!-- doc-test: run -->                    run this block (docs/*.md)
    <!-- doc-test: stdin "hello\\n" -->         run it with this standard input (a JSON string)
    <!-- doc-test: skip (why not) -->         never run it; the reason is required

Each command must end with the exit status its line documents: `exit status N` in its
trailing comment, else 0. A command goes on over lines that end with a backslash; the
blocks of one document run one after the other in one simulated terminal: what a block
exports and the directory it ends in are where the next block starts."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SHELL_LANGUAGES = frozenset({"sh", "bash", "shell"})
_FENCE = re.compile(r"^(?P<fence>```+|~~~+)\s*(?P<language>[\w+-]*)")
_MARKER = re.compile(r"^\s*<!--\s*doc-test:\s*(?P<body>.*?)\s*-->\s*$")
_EXIT_STATUS = re.compile(r"\bexit status (\d+)\b")

Fate = Literal["run", "skip", "unmarked"]


class MarkerError(ValueError):
    """A marker that cannot be read, or one that does not stand before a shell block."""


@dataclass(frozen=True, slots=True)
class Command:
    """One command of a block: its text (continuation lines included) and expected status."""

    line: int
    text: str
    expected_status: int


@dataclass(frozen=True, slots=True)
class ShellBlock:
    """A shell block of a document and what its marker says."""

    path: Path
    line: int
    text: str
    fate: Fate
    stdin: str = ""
    skip_reason: str = ""

    @property
    def where(self) -> str:
        """`README.md:42`: the line of the opening fence."""
        return f"{self.path.name}:{self.line}"

    def commands(self) -> list[Command]:
        """The block's commands, comment lines and blank lines left out."""
        commands: list[Command] = []
        pending: list[str] = []
        first = 0
        for offset, raw in enumerate(self.text.splitlines()):
            if not pending:
                if not raw.strip() or raw.lstrip().startswith("#"):
                    continue
                first = self.line + 1 + offset
            pending.append(raw)
            if raw.rstrip().endswith("\\"):
                continue
            comment = trailing_comment(raw)
            match = _EXIT_STATUS.search(comment)
            status = int(match.group(1)) if match else 0
            commands.append(Command(first, "\n".join(pending), status))
            pending = []
        if pending:
            raise MarkerError(f"{self.where}: the block ends inside a continued command")
        return commands


def trailing_comment(line: str) -> str:
    """The `# ...` comment that ends a shell line ("" when none): a `#` outside quotes at
    the start of a word."""
    quote = ""
    escaped = False
    for index, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[index + 1 :].strip()
    return ""


def _marker(body: str, where: str) -> tuple[Fate, str, str]:
    """(fate, stdin, skip reason) of a marker's text."""
    if body == "run":
        return "run", "", ""
    if body.startswith("stdin "):
        try:
            stdin = json.loads(body.removeprefix("stdin "))
        except ValueError:
            stdin = None
        if not isinstance(stdin, str):
            raise MarkerError(f'{where}: `stdin` takes a JSON string, e.g. stdin "hello\\n"')
        return "run", stdin, ""
    skip = re.fullmatch(r"skip\s+\((?P<reason>.+)\)", body)
    if skip:
        return "skip", "", skip.group("reason")
    raise MarkerError(
        f'{where}: unknown doc-test marker {body!r}; known: run, stdin "...", skip (reason)'
    )


def shell_blocks(path: Path) -> list[ShellBlock]:
    """Every shell block of a Markdown file with its marker (fate `unmarked` without one)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[ShellBlock] = []
    marker: tuple[Fate, str, str, int] | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        found = _MARKER.match(line)
        if found:
            where = f"{path.name}:{index + 1}"
            if marker is not None:
                raise MarkerError(f"{where}: two doc-test markers in a row")
            marker = (*_marker(found.group("body"), where), index + 1)
            index += 1
            continue
        fence = _FENCE.match(line)
        if not fence:
            if marker is not None and line.strip():
                raise MarkerError(f"{path.name}:{marker[3]}: the marker is not just before a block")
            index += 1
            continue
        end = index + 1
        while end < len(lines) and not lines[end].startswith(fence.group("fence")):
            end += 1
        language = fence.group("language")
        if language in SHELL_LANGUAGES:
            fate, stdin, reason = marker[:3] if marker else ("unmarked", "", "")
            text = "\n".join(lines[index + 1 : end])
            blocks.append(ShellBlock(path, index + 1, text, fate, stdin, reason))
        elif marker is not None:
            raise MarkerError(
                f"{path.name}:{marker[3]}: the marker stands before a non-shell block"
            )
        marker = None
        index = end + 1
    if marker is not None:
        raise MarkerError(f"{path.name}:{marker[3]}: the marker is not followed by a block")
    return blocks


def runnable_blocks(path: Path, *, run_unmarked: bool) -> list[ShellBlock]:
    """The blocks the test runs: marked `run` (and, with `run_unmarked`, the unmarked)."""
    return [
        block
        for block in shell_blocks(path)
        if block.fate == "run" or (run_unmarked and block.fate == "unmarked")
    ]


def block_script(block: ShellBlock, state_dir: Path, substitutions: dict[str, str]) -> str:
    """A bash script that resumes the terminal of the blocks before (state_dir/env and cwd),
    runs each command with its output in state_dir/<n>.out, stops at the first command whose
    status differs from the documented one (state_dir/failed: `<n> <status>`), and saves the
    terminal for the next block. `substitutions` replace text in the commands (addresses)."""
    state = json.dumps(str(state_dir))
    parts = [
        "set -o pipefail",
        f"__state={state}",
        '[ -f "$__state/env" ] && . "$__state/env"',
        '[ -f "$__state/cwd" ] && cd "$(cat "$__state/cwd")"',
        'rm -f "$__state/failed"',
    ]
    for number, command in enumerate(block.commands()):
        text = command.text
        for old, new in substitutions.items():
            text = text.replace(old, new)
        parts += [
            "{",
            text,
            f'}} >"$__state/{number}.out" 2>&1',
            "__status=$?",
            f'if [ "$__status" -ne {command.expected_status} ]; then',
            f'  echo "{number} $__status" >"$__state/failed"; exit 100',
            "fi",
        ]
    parts += ['export -p >"$__state/env"', 'pwd >"$__state/cwd"']
    return "\n".join(parts) + "\n"
