"""`python -m chatplane.llm_emulator --port 0`: serve the emulator until SIGTERM/SIGINT; the
first line on stdout is a ready line with the bound port."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from aiohttp import web

from chatplane.llm_emulator.server import Emulator, Pace


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m chatplane.llm_emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--first-token-seconds", type=float, default=0.0)
    parser.add_argument("--tokens-per-second", type=float, default=1000.0)
    parser.add_argument("--tokens", type=int, default=24, help="tokens per answer")
    parser.add_argument("--api-key", default="", help="answer 401 to any other key")
    parser.add_argument("--seed", type=int, default=0, help="for rules with a probability")
    parser.add_argument(
        "--stamp-tokens",
        action="store_true",
        help="each token's text is its emission time in ns (benchmarks measure per-token lag)",
    )
    return parser.parse_args(argv)


async def serve(arguments: argparse.Namespace) -> None:
    """Serve until a signal, then stop."""
    pace = Pace(
        first_token_seconds=arguments.first_token_seconds,
        tokens_per_second=arguments.tokens_per_second,
        tokens=arguments.tokens,
    )
    emulator = Emulator(
        pace, api_key=arguments.api_key, seed=arguments.seed, stamp_tokens=arguments.stamp_tokens
    )
    # handler_cancellation: a client that goes away cancels its handler, which records it.
    runner = web.AppRunner(emulator.app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, arguments.host, arguments.port)
    await site.start()
    port = runner.addresses[0][1]
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    ready = {"event": "ready", "service": "llm_emulator", "port": port}
    sys.stdout.write(json.dumps(ready) + "\n")
    sys.stdout.flush()
    await stopping.wait()
    await runner.cleanup()


asyncio.run(serve(_arguments(sys.argv[1:])))
