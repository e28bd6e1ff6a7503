"""`chatplane up` (what `make run` runs) serves the web chat through Envoy on the API's origin."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.web.browser import REPO

_READY_TIMEOUT = 90.0


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("content-type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("content-type", ""), error.read()


def test_chatplane_up_serves_the_page_and_the_api_on_one_origin(tmp_path: Path) -> None:
    if not (REPO / "web" / "dist" / "index.html").is_file():
        pytest.fail("web/dist is not built: run `make web`", pytrace=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPLANE_")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from chatplane.cli.main import main; main()",
            "--data-dir",
            str(tmp_path / "data"),
            "up",
            "--port",
            "0",
            "--edge-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    output: list[str] = []
    try:
        deadline = time.monotonic() + _READY_TIMEOUT
        url = ""
        while not url:
            line = process.stdout.readline()
            assert line, "chatplane up exited:\n" + "".join(output)
            assert time.monotonic() < deadline, "".join(output)
            output.append(line)
            found = re.search(r"web chat \(browser\):\s+(http://\S+/)", line)
            url = found.group(1) if found else ""
        key = next(
            line.split(":", 1)[1].strip() for line in output if "development API key" in line
        )
        status, content_type, body = _get(url)
        assert (status, content_type) == (200, "text/html"), (status, content_type)
        assert b'<div id="root">' in body
        assert b"/assets/" in body
        script = re.search(rb'src="(/assets/[^"]+\.js)"', body)
        assert script
        status, content_type, _ = _get(url.rstrip("/") + script.group(1).decode())
        assert status == 200 and "javascript" in content_type
        # The API on the same origin: no key → 401; with the key → the (empty) list.
        assert _get(url + "v1/conversations")[0] == 401
        status, _, listed = _get(url + "v1/conversations", {"authorization": f"Bearer {key}"})
        assert status == 200, listed
    finally:
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
        output.append(rest)
    stopped = next(line for line in "".join(output).splitlines() if line.startswith("stopped:"))
    assert "webui=0" in stopped and "edge=0" in stopped, stopped
    assert process.returncode == 0
