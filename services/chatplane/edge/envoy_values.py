"""The values of the `${NAME}` placeholders of envoy/envoy.yaml, from the settings, and the
file filled in with them. Nothing else of Envoy's configuration is decided here: the file at the
top of the repository (mounted from a ConfigMap in a pod) is the configuration."""

from __future__ import annotations

import json
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from chatplane.common.errors import ConfigError
from chatplane.common.server import GRPC_MAX_MESSAGE_BYTES
from chatplane.common.settings import Settings

# services/chatplane/edge/ → the checkout's (or the image's /app/) envoy/.
ENVOY_DIR = Path(__file__).resolve().parents[3] / "envoy"
TEMPLATE = ENVOY_DIR / "envoy.yaml"

_KIB = 1024
# The wire encodings a client may choose inflate the same request differently: the gRPC body is
# protobuf (one frame header + field tags), JSON may escape every character of the text as
# `\u00XX` (6 bytes each). The edge admits any request the Gateway could accept in any encoding.
_FIELD_OVERHEAD_BYTES = 4 * _KIB
_JSON_ESCAPE_FACTOR = 6
# One gRPC message of the largest size the Gateway accepts, with its 5-byte frame header.
_GRPC_FRAME = GRPC_MAX_MESSAGE_BYTES + 5


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """The largest request body the edge lets through, per encoding."""

    grpc_bytes: int
    json_bytes: int
    # UploadDocument (gRPC and gRPC-Web only): a whole document, up to the Gateway's gRPC
    # message limit.
    upload_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> BodyLimits:
        """The Gateway's largest acceptable request, per encoding."""
        largest_field = max(settings.max_message_bytes, settings.max_comment_bytes)
        return cls(
            grpc_bytes=largest_field + _FIELD_OVERHEAD_BYTES,
            json_bytes=largest_field * _JSON_ESCAPE_FACTOR + _FIELD_OVERHEAD_BYTES,
            upload_bytes=min(settings.document_max_bytes + _FIELD_OVERHEAD_BYTES, _GRPC_FRAME),
        )


def allowed_origins(settings: Settings) -> list[str]:
    """The CORS allow-list: exact origins, without a trailing slash."""
    origins = [o.strip().rstrip("/") for o in settings.edge_allowed_origins.split(",")]
    return [o for o in origins if o]


def _host_port(setting: str, address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{setting} must be host:port, not {address!r}")
    return host.strip("[]"), int(port)


def _seconds(value: float) -> str:
    return f"{value:g}s"


def envoy_values(
    settings: Settings, *, descriptor_set: Path, access_log: Path, envoy_dir: Path = ENVOY_DIR
) -> dict[str, str]:
    """Every placeholder's value, as the text that replaces it."""
    gateway_host, gateway_port = _host_port("CHATPLANE_GATEWAY_ADDRESS", settings.gateway_address)
    web_endpoints: list[object] = []
    if settings.web_address:
        web_host, web_port = _host_port("CHATPLANE_WEB_ADDRESS", settings.web_address)
        address = {"socket_address": {"address": web_host, "port_value": web_port}}
        web_endpoints.append({"lb_endpoints": [{"endpoint": {"address": address}}]})
    limits = BodyLimits.from_settings(settings)
    return {
        "ENVOY_DIR": str(envoy_dir),
        "ADMIN_PORT": str(settings.edge_admin_port),
        "EDGE_HOST": settings.edge_host,
        "EDGE_PORT": str(settings.edge_port),
        "XFF_TRUSTED_HOPS": str(settings.edge_xff_trusted_hops),
        "MAX_CONNECTIONS": str(settings.edge_max_connections),
        "MAX_HEAP_BYTES": str(settings.edge_max_heap_bytes),
        "RATE_LIMIT_BURST": str(settings.edge_rate_limit_burst),
        "RATE_LIMIT_PER_SECOND": str(settings.edge_rate_limit_per_second),
        "STREAM_IDLE_TIMEOUT": _seconds(settings.edge_stream_idle_timeout_seconds),
        "TURN_TIMEOUT": _seconds(settings.turn_timeout_seconds),
        "MAX_GRPC_REQUEST_BYTES": str(limits.grpc_bytes),
        "MAX_JSON_REQUEST_BYTES": str(limits.json_bytes),
        "MAX_UPLOAD_REQUEST_BYTES": str(limits.upload_bytes),
        "INGEST_TIMEOUT": _seconds(settings.document_ingest_timeout_seconds),
        # JSON is YAML: the lists go in as flow sequences.
        "ALLOWED_ORIGINS": json.dumps([{"exact": o} for o in allowed_origins(settings)]),
        "GATEWAY_HOST": gateway_host,
        "GATEWAY_PORT": str(gateway_port),
        "WEB_ENDPOINTS": json.dumps(web_endpoints),
        "DESCRIPTOR_SET": str(descriptor_set),
        "ACCESS_LOG": str(access_log),
    }


def fill_in(template: str, values: Mapping[str, str], *, source: Path = TEMPLATE) -> str:
    """`template` with every `${NAME}` replaced; a placeholder without a value (or a stray `$`)
    is a ConfigError naming it."""
    try:
        return string.Template(template).substitute(values)
    except KeyError as missing:
        raise ConfigError(
            f"{source}: no value for the placeholder ${{{missing.args[0]}}} "
            f"(known: {', '.join(sorted(values))})"
        ) from None
    except ValueError as invalid:
        raise ConfigError(f"{source}: {invalid} (write a literal $ as $$)") from None
