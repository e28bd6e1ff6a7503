"""Splitting a document's text into chunks for retrieval: at most `size` characters each
(default 1,000, about 250 tokens at 4 characters per token, which fits the embedding model's
256 word-piece window), consecutive chunks overlapping by `overlap` characters (default 150) so
a sentence cut at a boundary is whole in one of them. Cuts fall on the best boundary in the
second half of the window: a blank line, a line end, a sentence end, a space, else anywhere.

Markdown is split at its ATX headings first (`#` to `######`, outside fenced code), so no chunk
spans two sections, and every chunk of a section starts with the section's heading path
(`Install > Linux`), which keeps a chunk from the middle of a section findable by its topic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

DEFAULT_CHUNK_CHARS: Final = 1000
DEFAULT_OVERLAP_CHARS: Final = 150

_HEADING: Final = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE: Final = re.compile(r"^ {0,3}(```|~~~)")
_WHITESPACE: Final = re.compile(r"\s")
# Boundaries in order of preference; a cut goes right after the separator.
_BOUNDARIES: Final = ("\n\n", "\n", ". ", "! ", "? ", "; ", ", ", " ")
_BREADCRUMB_SEPARATOR: Final = " > "


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk of a document: its position (from 0), the heading path it sits under
    (markdown; "" otherwise) and its text (which starts with that path)."""

    index: int
    heading: str
    text: str


@dataclass(frozen=True, slots=True)
class _Section:
    heading: str
    body: str


def chunk_text(
    text: str,
    *,
    markdown: bool = False,
    size: int = DEFAULT_CHUNK_CHARS,
    overlap: int = DEFAULT_OVERLAP_CHARS,
) -> list[Chunk]:
    """The chunks of `text`, in document order; none for blank text.

    Raises ValueError unless 0 <= overlap < size / 2 (so every step moves forward by more than
    half a window).
    """
    if size < 2 or not 0 <= overlap < size // 2:
        raise ValueError("need size >= 2 and 0 <= overlap < size / 2")
    text = _normalized(text)
    sections = _markdown_sections(text) if markdown else [_Section("", text)]
    chunks: list[Chunk] = []
    for section in sections:
        prefix = f"{section.heading}\n" if section.heading else ""
        # The heading path takes room in every chunk; a very long one is cut.
        prefix = prefix[: size // 2]
        for piece in split_text(section.body, size - len(prefix), overlap):
            chunks.append(Chunk(index=len(chunks), heading=section.heading, text=prefix + piece))
    return chunks


def split_text(text: str, size: int, overlap: int) -> list[str]:
    """`text` cut into stripped pieces of at most `size` characters overlapping by about
    `overlap` characters (rounded to a word boundary)."""
    pieces: list[str] = []
    start, length = 0, len(text)
    overlap = min(overlap, max(size // 2 - 1, 0))
    while start < length:
        end = min(start + size, length)
        if end < length:
            end = _best_cut(text, start, end)
        piece = text[start:end].strip()
        if piece:
            pieces.append(piece)
        if end >= length:
            break
        following = max(end - overlap, start + 1)
        if following < end:
            # Start the overlap on a word: just after the first whitespace in it.
            space = _WHITESPACE.search(text, following, end)
            if space is not None:
                following = space.end()
        start = following
    return pieces


def _best_cut(text: str, start: int, end: int) -> int:
    """The end of a piece starting at `start`: right after the preferred boundary in the
    second half of [start, end), else `end`."""
    low = start + (end - start) // 2
    for boundary in _BOUNDARIES:
        found = text.rfind(boundary, low, end)
        if found != -1:
            return found + len(boundary)
    return end


def _normalized(text: str) -> str:
    """Line ends unified, trailing spaces dropped, runs of blank lines made one."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _markdown_sections(text: str) -> list[_Section]:
    """The text split before each heading (outside fenced code), with its heading path."""
    sections: list[_Section] = []
    path: list[tuple[int, str]] = []
    heading = ""
    body: list[str] = []
    in_fence = False
    for line in text.split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line)
        if match is None:
            body.append(line)
            continue
        if "\n".join(body).strip():
            sections.append(_Section(heading, "\n".join(body).strip()))
        level, title = len(match.group(1)), match.group(2).strip()
        path = [(lvl, name) for lvl, name in path if lvl < level] + [(level, title)]
        heading = _BREADCRUMB_SEPARATOR.join(name for _, name in path)
        body = []
    if "\n".join(body).strip():
        sections.append(_Section(heading, "\n".join(body).strip()))
    return sections
