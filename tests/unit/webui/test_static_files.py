"""The web chat's static server: files, client-side routes, caching, security headers, and
what it refuses."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatplane.common.settings import Settings
from chatplane.webui.app import make_server

INDEX = b"<!doctype html><title>chat</title>"
ASSET = b"console.log('app')"


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("site") / "dist"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_bytes(INDEX)
    (root / "assets" / "index-abc123.js").write_bytes(ASSET)
    return root


def _serve(root: Path) -> Iterator[int]:
    server = make_server(Settings(web_dist_dir=str(root), webui_port=0))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def port(dist: Path) -> Iterator[int]:
    yield from _serve(dist)


def _request(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_index_with_security_headers(port: int) -> None:
    status, headers, body = _request(port, "/")
    assert status == 200
    assert body == INDEX
    assert headers["Content-Type"].startswith("text/html")
    assert headers["Cache-Control"] == "no-cache"
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"


def test_hashed_assets_are_immutable(port: int) -> None:
    status, headers, body = _request(port, "/assets/index-abc123.js")
    assert status == 200
    assert body == ASSET
    assert "javascript" in headers["Content-Type"]
    assert "immutable" in headers["Cache-Control"]


def test_client_side_route_gets_the_app(port: int) -> None:
    status, headers, body = _request(port, "/conversations/0123?x=1")
    assert (status, body, headers["Cache-Control"]) == (200, INDEX, "no-cache")


@pytest.mark.parametrize("path", ["/assets/missing.js", "/favicon.ico", "/assets/../nope.css"])
def test_missing_file_is_404_not_the_page(port: int, path: str) -> None:
    status, _, body = _request(port, path)
    assert status == 404
    assert body != INDEX


def test_no_escape_from_the_folder(port: int, dist: Path) -> None:
    (dist.parent / "secret.txt").write_text("secret")
    for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/assets/../../secret.txt"):
        status, _, body = _request(port, path)
        assert b"secret" not in body
        assert status == 404


def test_no_directory_listing(port: int) -> None:
    status, _, body = _request(port, "/assets/")
    assert status == 200
    assert body == INDEX  # a route, not a listing of the folder


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_only_get_and_head(port: int, method: str) -> None:
    status, headers, _ = _request(port, "/", method)
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"


def test_head_has_no_body(port: int) -> None:
    status, headers, body = _request(port, "/", "HEAD")
    assert (status, body) == (200, b"")
    assert headers["Content-Length"] == str(len(INDEX))


def test_not_built_says_how_to_build(tmp_path: Path) -> None:
    for port in _serve(tmp_path / "empty"):
        status, _, body = _request(port, "/")
        assert status == 503
        assert b"make web" in body
