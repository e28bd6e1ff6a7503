"""Reading uploaded documents by media type (chatplane.memory.document_text)."""

from __future__ import annotations

import io

import pypdf
import pytest

from chatplane.common import errors
from chatplane.memory.document_header import validate_header
from chatplane.memory.document_text import document_text
from tests.unit.memory.pdf_fixture import make_pdf


def test_text_and_markdown_are_utf8() -> None:
    assert document_text("café\n".encode(), "text/plain") == "café\n"
    assert document_text("\ufeff# T\n".encode(), "text/markdown") == "# T\n"


def test_pdf_text_layer_is_read_page_by_page() -> None:
    pdf = make_pdf([["Refund policy (v2)", "within 30 days"], ["Second page"]])
    text = document_text(pdf, "application/pdf")
    assert "Refund policy (v2)" in text and "within 30 days" in text
    assert text.index("within 30 days") < text.index("Second page")


@pytest.mark.parametrize(
    ("content", "mime_type", "field"),
    [
        (b"\xff\xfe\x00bad", "text/plain", "content"),
        (b"   \n", "text/plain", "content"),
        (b"not a pdf at all", "application/pdf", "content"),
        (make_pdf([["x"]])[:200], "application/pdf", "content"),
        (make_pdf([[]]), "application/pdf", "content"),
        (b"hello", "application/msword", "header.mime_type"),
    ],
)
def test_unreadable_documents_are_invalid_arguments(
    content: bytes, mime_type: str, field: str
) -> None:
    with pytest.raises(errors.InvalidArgument) as raised:
        document_text(content, mime_type)
    assert raised.value.field == field


@pytest.mark.parametrize(
    ("tenant", "name", "mime_type", "field"),
    [
        ("", "a.md", "text/markdown", "header.tenant_id"),
        ("t", " ", "text/markdown", "header.name"),
        ("t", "a" * 257, "text/markdown", "header.name"),
        ("t", "a\nb", "text/markdown", "header.name"),
        ("t", "a.doc", "application/msword", "header.mime_type"),
    ],
)
def test_bad_headers_name_their_field(tenant: str, name: str, mime_type: str, field: str) -> None:
    with pytest.raises(errors.InvalidArgument) as raised:
        validate_header(tenant, name, mime_type)
    assert raised.value.field == field


def test_a_good_header_passes() -> None:
    validate_header("t", "Handbook 2026.pdf", "application/pdf")


def test_an_encrypted_pdf_is_refused() -> None:
    writer = pypdf.PdfWriter()
    writer.add_blank_page(width=200, height=200)
    writer.encrypt("secret")
    buffer = io.BytesIO()
    writer.write(buffer)
    with pytest.raises(errors.InvalidArgument, match="encrypted"):
        document_text(buffer.getvalue(), "application/pdf")
