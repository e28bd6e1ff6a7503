"""The request handler of the web chat's static server: files of the built app with the right
caching, the app's index.html for its client-side routes, and security headers (a strict
Content-Security-Policy backs up the sanitising of model text in the page)."""

from __future__ import annotations

import logging
import posixpath
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

_log = logging.getLogger(__name__)

# Vite names everything under assets/ by its content hash: cacheable forever.
_IMMUTABLE_PREFIX = "/assets/"
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
        "form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
NOT_BUILT = b"The web chat is not built: run `make web`.\n"


class StaticFilesHandler(SimpleHTTPRequestHandler):
    """GET/HEAD of the files under `directory`; other methods get 405."""

    server_version = "chatplane-webui"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def __init__(self, *args: Any, directory: str, **kwargs: Any) -> None:
        super().__init__(*args, directory=directory, **kwargs)

    def do_GET(self) -> None:
        self._serve(head_only=False)

    def do_HEAD(self) -> None:
        self._serve(head_only=True)

    def _refuse_method(self) -> None:
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        self._refuse_method()

    def do_PUT(self) -> None:
        self._refuse_method()

    def do_DELETE(self) -> None:
        self._refuse_method()

    def do_PATCH(self) -> None:
        self._refuse_method()

    def do_OPTIONS(self) -> None:
        self._refuse_method()

    def _serve(self, *, head_only: bool) -> None:
        root = Path(self.directory)
        index = root / "index.html"
        if not index.is_file():
            self._plain(HTTPStatus.SERVICE_UNAVAILABLE, NOT_BUILT, head_only=head_only)
            return
        path = posixpath.normpath(unquote(urlsplit(self.path).path))
        target = Path(self.translate_path(self.path))
        immutable = False
        if target.is_file():
            immutable = path.startswith(_IMMUTABLE_PREFIX)
        elif posixpath.splitext(path)[1]:
            # A missing file (script, style, icon): 404, never the HTML page in its place.
            self._plain(HTTPStatus.NOT_FOUND, b"not found\n", head_only=head_only)
            return
        else:
            target = index  # "/", or a client-side route of the app
        cache = "public, max-age=31536000, immutable" if immutable else "no-cache"
        body = target.read_bytes()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", self.guess_type(str(target)))
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def _plain(self, status: HTTPStatus, body: bytes, *, head_only: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def version_string(self) -> str:
        return self.server_version

    def end_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def list_directory(self, path: str | Path) -> None:  # type: ignore[override]
        self._plain(HTTPStatus.NOT_FOUND, b"not found\n", head_only=False)

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("request", extra={"detail": format % args})
