"""How the documentation test reads shell blocks and their markers, and runs a block's script
(without a stack: plain shell commands)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.clients.client_process import REPO
from tests.docs.shell_blocks import (
    MarkerError,
    ShellBlock,
    block_script,
    runnable_blocks,
    shell_blocks,
    trailing_comment,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "doc.md"
    path.write_text(text)
    return path


def test_markers_decide_what_runs(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "intro\n\n```sh\necho plain\n```\n\n<!-- doc-test: run -->\n```bash\necho run\n```\n"
        '<!-- doc-test: stdin "a\\nb\\n" -->\n```shell\ncat\n```\n'
        "<!-- doc-test: skip (needs a cluster) -->\n```sh\nmake run-cluster\n```\n"
        "```python\nprint('not shell')\n```\n```\nno language\n```\n",
    )
    blocks = shell_blocks(path)
    assert [(b.line, b.fate) for b in blocks] == [
        (3, "unmarked"),
        (8, "run"),
        (12, "run"),
        (16, "skip"),
    ]
    assert blocks[2].stdin == "a\nb\n"
    assert blocks[3].skip_reason == "needs a cluster"
    assert [b.line for b in runnable_blocks(path, run_unmarked=False)] == [8, 12]
    assert [b.line for b in runnable_blocks(path, run_unmarked=True)] == [3, 8, 12]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<!-- doc-test: maybe -->\n```sh\nls\n```\n", "unknown doc-test marker"),
        ("<!-- doc-test: skip -->\n```sh\nls\n```\n", "unknown doc-test marker"),
        ("<!-- doc-test: stdin hello -->\n```sh\nls\n```\n", "JSON string"),
        ("<!-- doc-test: run -->\n\ntext\n```sh\nls\n```\n", "not just before a block"),
        ("<!-- doc-test: run -->\n```python\nx\n```\n", "non-shell block"),
        ("```sh\nls\n```\n<!-- doc-test: run -->\n", "not followed by a block"),
        ("<!-- doc-test: run -->\n<!-- doc-test: run -->\n```sh\nls\n```\n", "two doc-test"),
    ],
)
def test_a_marker_that_cannot_be_read_is_an_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(MarkerError, match=message):
        shell_blocks(write(tmp_path, text))


def test_commands_continue_over_backslashes_and_read_their_exit_status(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "```sh\n# a comment line\n\ncurl -N -H 'a: b' \\\n     http://x   # streams\n"
        "chatplane eval --variant a@2   # gate: FAILED, exit status 1\n"
        "echo '# exit status 3'\n```\n",
    )
    (block,) = shell_blocks(path)
    commands = block.commands()
    assert [(c.line, c.expected_status) for c in commands] == [(4, 0), (6, 1), (7, 0)]
    assert commands[0].text == "curl -N -H 'a: b' \\\n     http://x   # streams"
    with pytest.raises(MarkerError, match="continued command"):
        shell_blocks(write(tmp_path, "```sh\nls \\\n```\n"))[0].commands()


@pytest.mark.parametrize(
    ("line", "comment"),
    [
        ("ls   # list", "list"),
        ("echo '# not a comment'", ""),
        ('echo "a # b" # c', "c"),
        ("echo a#b", ""),
        ("echo \\# x", ""),
    ],
)
def test_trailing_comment(line: str, comment: str) -> None:
    assert trailing_comment(line) == comment


def run(block: ShellBlock, state: Path, substitutions: dict[str, str] | None = None) -> int:
    script = state / "block.sh"
    script.write_text(block_script(block, state, substitutions or {}))
    return subprocess.run(
        ["bash", str(script)], input=block.stdin, text=True, check=False
    ).returncode


def test_blocks_share_one_terminal_and_stop_at_an_undocumented_status(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    state = tmp_path / "state"
    state.mkdir()
    (state / "cwd").write_text(str(tmp_path))
    first = ShellBlock(
        tmp_path / "doc.md", 1, "export GREETING=hi\ncd sub\nfalse  # exit status 1", "run"
    )
    second = ShellBlock(
        tmp_path / "doc.md", 9, 'echo "$GREETING from $(basename $PWD) on ADDR"\ncat', "run", "in\n"
    )
    assert run(first, state) == 0
    assert run(second, state, {"ADDR": "127.0.0.1:4"}) == 0
    assert (state / "0.out").read_text() == "hi from sub on 127.0.0.1:4\n"
    assert (state / "1.out").read_text() == "in\n"
    third = ShellBlock(tmp_path / "doc.md", 20, "true\nsh -c 'exit 7'\necho never", "run")
    assert run(third, state) == 100
    assert (state / "failed").read_text().split() == ["1", "7"]


def test_every_shell_block_of_the_docs_has_a_readable_fate() -> None:
    """Markers in README.md and docs/*.md parse, every README block either runs or says why
    not, and a skipped block is the exception."""
    readme = shell_blocks(REPO / "README.md")
    assert all(b.skip_reason for b in readme if b.fate == "skip")
    assert sum(b.fate != "skip" for b in readme) > sum(b.fate == "skip" for b in readme)
    for path in sorted((REPO / "docs").glob("*.md")):
        for block in shell_blocks(path):
            block.commands()
