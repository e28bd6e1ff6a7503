"""Wires the edge process (`python -m chatplane.edge`): renders Envoy's configuration from the
settings into <data dir>/edge/, starts Envoy, prints the ready line (the listener's port) once
Envoy's admin interface reports it live, and on SIGTERM drains Envoy before stopping it."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

from chatplane.common import errors
from chatplane.common.settings import Settings
from chatplane.edge.descriptors import edge_descriptor_set
from chatplane.edge.envoy_config import LISTENER, allowed_origins, render, to_yaml
from chatplane.edge.envoy_process import EnvoyProcess

_log = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 30.0
# How long Envoy keeps telling clients to go away (GOAWAY / `connection: close`) while it drains.
DRAIN_SECONDS = 2
ACTIVE_REQUESTS_STAT = f"http.{LISTENER}.downstream_rq_active"
_ENVOY_LOG_LEVELS = {"DEBUG": "debug", "INFO": "info", "WARNING": "warn", "ERROR": "error"}


def write_config(settings: Settings) -> Path:
    """Writes the descriptor set and envoy.yaml into <data dir>/edge/; the config's path."""
    work_dir = settings.data_path("edge")
    logs_dir = settings.data_path("logs")
    work_dir.mkdir(exist_ok=True)
    logs_dir.mkdir(exist_ok=True)
    descriptor_path = work_dir / "chatplane-edge.binpb"
    descriptor_path.write_bytes(edge_descriptor_set())
    config = to_yaml(
        render(
            settings,
            descriptor_path=descriptor_path.resolve(),
            access_log_path=(logs_dir / "edge-access.log").resolve(),
        )
    )
    config_path = work_dir / "envoy.yaml"
    config_path.write_text(config)
    return config_path


async def run(settings: Settings) -> None:
    """Run Envoy until SIGTERM (then drain it) or until it exits by itself."""
    config_path = write_config(settings)
    work_dir = config_path.parent
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    envoy = await EnvoyProcess.start(
        config_path,
        work_dir,
        log_level=_ENVOY_LOG_LEVELS.get(settings.log_level.upper(), "info"),
        drain_seconds=DRAIN_SECONDS,
    )
    try:
        await envoy.wait_ready(READY_TIMEOUT_SECONDS)
        port = await envoy.listener_port(LISTENER)
    except errors.ChatplaneError:
        envoy.process.kill()
        await envoy.process.wait()
        raise
    admin_port = int(envoy.admin_address.rpartition(":")[2])
    sys.stdout.write(
        json.dumps({"event": "ready", "service": "edge", "port": port, "admin_port": admin_port})
        + "\n"
    )
    sys.stdout.flush()
    _log.info(
        "serving",
        extra={
            "port": port,
            "admin_port": admin_port,
            "gateway": settings.gateway_address,
            "web": settings.web_address or None,
            "allowed_origins": allowed_origins(settings),
            "config": str(config_path),
        },
    )
    exited = asyncio.ensure_future(envoy.process.wait())
    stop = asyncio.ensure_future(stopping.wait())
    await asyncio.wait([exited, stop], return_when=asyncio.FIRST_COMPLETED)
    if not stopping.is_set():
        stop.cancel()
        _log.error("envoy exited", extra={"code": envoy.process.returncode})
        raise SystemExit(envoy.process.returncode or 1)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(signum)
        signal.signal(signum, signal.SIG_IGN)
    _log.info("draining", extra={"grace_seconds": settings.drain_grace_seconds})
    code = await envoy.drain_and_stop(ACTIVE_REQUESTS_STAT, settings.drain_grace_seconds)
    _log.info("stopped", extra={"code": code})
