"""Wires the edge process (`python -m chatplane.edge`): fills the settings into envoy/envoy.yaml
(envoy_values.py) and writes the result and the transcoder's descriptor set into
<data dir>/edge/, starts Envoy, prints the ready line (the listener's port) once Envoy's admin
interface reports it live, and on SIGTERM drains Envoy before stopping it."""

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
from chatplane.edge.envoy_process import EnvoyProcess
from chatplane.edge.envoy_values import TEMPLATE, allowed_origins, envoy_values, fill_in

_log = logging.getLogger(__name__)

# The listener's name in envoy/envoy.yaml.
LISTENER = "edge"
READY_TIMEOUT_SECONDS = 30.0
# How long Envoy keeps telling clients to go away (GOAWAY / `connection: close`) while it drains.
DRAIN_SECONDS = 2
ACTIVE_REQUESTS_STAT = f"http.{LISTENER}.downstream_rq_active"
_ENVOY_LOG_LEVELS = {"DEBUG": "debug", "INFO": "info", "WARNING": "warn", "ERROR": "error"}


def write_config(settings: Settings, template: Path = TEMPLATE) -> Path:
    """Writes the descriptor set and `template` filled in from the settings into
    <data dir>/edge/; the path of the configuration Envoy runs."""
    work_dir = settings.data_path("edge")
    work_dir.mkdir(exist_ok=True)
    # As given (`/dev/stdout` must stay that, not the file it links to), else in logs/.
    access_log = Path(settings.edge_access_log)
    if not settings.edge_access_log:
        logs_dir = settings.data_path("logs")
        logs_dir.mkdir(exist_ok=True)
        access_log = (logs_dir / "edge-access.log").resolve()
    descriptor_set = work_dir / "chatplane-edge.binpb"
    descriptor_set.write_bytes(edge_descriptor_set())
    values = envoy_values(
        settings,
        descriptor_set=descriptor_set.resolve(),
        access_log=access_log,
        envoy_dir=template.parent.resolve(),
    )
    try:
        text = template.read_text()
    except OSError as error:
        raise errors.ConfigError(f"cannot read {template}: {error.strerror}") from None
    config_path = work_dir / "envoy.yaml"
    config_path.write_text(fill_in(text, values, source=template))
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
