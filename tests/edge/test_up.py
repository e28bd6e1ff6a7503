"""`chatplane up` (what `make run` calls) starts Envoy too and prints its URL and a curl command
that streams an answer; with CHATPLANE_WEB_ADDRESS the same origin also serves the web chat's
files from a static server."""

from __future__ import annotations

import asyncio
import functools
import http.server
import json
import os
import re
import signal
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from chatplane.launcher import ServiceProcess
from chatplane.launcher.stack import EDGE
from tests.edge.edge_client import EdgeStack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="package")]

CHATPLANE = [sys.executable, "-c", "from chatplane.cli.main import main; main()"]


async def test_chatplane_up_serves_http_through_envoy(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        *CHATPLANE, "--data-dir", str(tmp_path), "up", "--port", "0", "--edge-port", "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert process.stdout is not None
    output = ""
    try:
        async with asyncio.timeout(90):
            while "stop:" not in output:
                line = await process.stdout.readline()
                assert line, output
                output += line.decode()
        url = re.search(r"Envoy \(HTTP\):\s+(http://\S+)", output)
        curl = re.search(r"SSE with curl:\s+(curl .*)", output)
        assert url and curl, output
        assert url.group(1) in curl.group(1)
        curl_process = await asyncio.create_subprocess_exec(
            "bash", "-c", curl.group(1), stdout=asyncio.subprocess.PIPE
        )
        stdout, _ = await asyncio.wait_for(curl_process.communicate(), timeout=60)
        lines = [line for line in stdout.decode().splitlines() if line.startswith("data: ")]
        assert lines[0].startswith('data: {"started"') and lines[-1].startswith('data: {"done"')
    finally:
        process.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0
    assert "edge=0" in rest.decode(), rest.decode()


@pytest.fixture
def static_site(tmp_path: Path) -> Iterator[str]:
    """A static file server (the stand-in for the web chat's) on a free port; its address."""
    (tmp_path / "index.html").write_text("<!doctype html><title>chatplane</title>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest_asyncio.fixture(loop_scope="package")
async def edge_with_web(
    edge_stack: EdgeStack, static_site: str, tmp_path: Path
) -> AsyncIterator[str]:
    """A second Envoy in front of the shared Gateway, with the web route; its address."""
    args = ["--edge-port", "0", "--gateway-address", edge_stack.gateway_address,
            "--web-address", static_site]  # fmt: skip
    env = {**os.environ, "CHATPLANE_DATA_DIR": str(tmp_path / "edge"), "PYTHONUNBUFFERED": "1"}
    edge = await ServiceProcess.start(EDGE, args, env, tmp_path / "edge.log")
    try:
        yield f"127.0.0.1:{edge.port}"
    finally:
        assert await edge.stop(timeout=10) == 0


async def test_web_files_and_api_share_one_origin(
    edge_stack: EdgeStack, edge_with_web: str
) -> None:
    async with httpx.AsyncClient(timeout=10) as http_client:
        page = await http_client.get(f"http://{edge_with_web}/")
        assert page.status_code == 200 and "<title>chatplane</title>" in page.text
        missing = await http_client.get(f"http://{edge_with_web}/no-such-file.js")
        assert missing.status_code == 404
        api = await http_client.get(
            f"http://{edge_with_web}/v1/conversations",
            headers={"authorization": f"Bearer {edge_stack.api_key}"},
        )
        assert api.status_code == 200 and "conversations" in api.json()


async def test_sigterm_lets_a_stream_in_flight_finish(
    edge_stack: EdgeStack, tmp_path: Path
) -> None:
    """The edge drains on SIGTERM: an answer being streamed through it still ends with `done`,
    then the edge exits 0."""
    args = ["--edge-port", "0", "--gateway-address", edge_stack.gateway_address]
    env = {**os.environ, "CHATPLANE_DATA_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    edge = await ServiceProcess.start(EDGE, args, env, tmp_path / "edge.log")
    events: list[str] = []
    async with (
        httpx.AsyncClient(timeout=30) as client,
        client.stream(
            "POST",
            f"http://127.0.0.1:{edge.port}/v1/chat",
            headers={"authorization": f"Bearer {edge_stack.api_key}"},
            json={"text": "Tell me about the delivery address."},
        ) as response,
    ):
        stopping: asyncio.Task[int] | None = None
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(next(iter(json.loads(line[6:]))))
                if stopping is None:
                    stopping = asyncio.create_task(edge.stop(timeout=20))
    assert stopping is not None
    assert await stopping == 0
    assert events[0] == "started" and events[-1] == "done"
