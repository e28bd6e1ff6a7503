"""The web chat's static server process: serves the built app (web/dist) on host:webui_port
from a thread pool, prints the same ready line as the gRPC services, stops on SIGTERM."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import signal
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

from chatplane.common.settings import Settings
from chatplane.webui.static_files import StaticFilesHandler

_log = logging.getLogger(__name__)

# services/chatplane/webui/app.py → the checkout's web/dist.
CHECKOUT_DIST = Path(__file__).resolve().parents[3] / "web" / "dist"


def dist_dir(settings: Settings) -> Path:
    """Where the built files are: `web_dist_dir`, or the checkout's web/dist."""
    return Path(settings.web_dist_dir).resolve() if settings.web_dist_dir else CHECKOUT_DIST


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Browsers open several connections at once; the default backlog of 5 is too small.
    request_queue_size = 64


def make_server(settings: Settings) -> ThreadingHTTPServer:
    """An HTTP server bound to host:webui_port (0 picks a free port)."""
    handler = functools.partial(StaticFilesHandler, directory=str(dist_dir(settings)))
    return _Server((settings.host, settings.webui_port), handler)


async def run(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT."""
    server = make_server(settings)
    root = dist_dir(settings)
    if not (root / "index.html").is_file():
        _log.warning("web chat not built; serving 503 until `make web`", extra={"dir": str(root)})
    thread = threading.Thread(target=server.serve_forever, name="webui", daemon=True)
    thread.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    port = server.server_address[1]
    sys.stdout.write(json.dumps({"event": "ready", "service": "webui", "port": port}) + "\n")
    sys.stdout.flush()
    _log.info("serving", extra={"port": port, "dir": str(root)})
    await stopping.wait()
    for signum in (signal.SIGTERM, signal.SIGINT):
        # As in the gRPC services: a repeated signal must not kill the orderly exit.
        loop.remove_signal_handler(signum)
        signal.signal(signum, signal.SIG_IGN)
    await asyncio.to_thread(server.shutdown)
    server.server_close()
    _log.info("stopped")
