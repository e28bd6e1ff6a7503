"""Envoy's configuration, rendered from the settings: one listener that serves native gRPC (h2c),
gRPC-Web and REST/JSON with Server-Sent Events in front of the Gateway, hardened as Envoy's edge
best practices ask (buffer, header, connection and body limits, underscore headers rejected, an
overload manager, a local rate limit), and optionally the web chat's static files on the same
origin. Why each limit is what it is: docs/edge.md."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from chatplane.common.settings import Settings
from chatplane.v1 import gateway_pb2, operator_pb2

GATEWAY_SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name
OPERATOR_SERVICE = operator_pb2.DESCRIPTOR.services_by_name["OperatorService"].full_name
WATCH_PATH = f"/{GATEWAY_SERVICE}/WatchConversation"
CHAT_PATH = f"/{GATEWAY_SERVICE}/Chat"
REST_CHAT_PATH = "/v1/chat"
REST_PREFIX = "/v1/"
GATEWAY_CLUSTER = "gateway"
WEB_CLUSTER = "web"
LISTENER = "edge"
# Rejects gRPC(-Web) request bodies that are not exactly one message frame.
GRPC_FRAME_CHECK = Path(__file__).with_name("grpc_frame_check.lua")

_TYPE = "type.googleapis.com/envoy."
_KIB = 1024

# The wire encodings a client may choose inflate the same request differently: the gRPC body is
# protobuf (one frame header + field tags), JSON may escape every character of the text as
# `\u00XX` (6 bytes each). The edge admits any request the Gateway could accept in any encoding.
_FIELD_OVERHEAD_BYTES = 4 * _KIB
_JSON_ESCAPE_FACTOR = 6
# The Gateway's gRPC server accepts messages up to 4 MiB (common/server.py); a unary JSON
# response (a page of history) is transcoded whole, so it may be as large.
_MAX_RESPONSE_BYTES = 4 * 1024 * _KIB

# google.rpc.Code of the edge's own error replies to REST/JSON clients, by HTTP status, so they
# have the same shape as the Gateway's errors ({"code", "message"}).
_JSON_ERROR_CODES: Mapping[int, int] = {
    400: 3,  # INVALID_ARGUMENT: malformed JSON, a wrong type, an unknown query parameter
    404: 5,  # NOT_FOUND: no such API path
    408: 4,  # DEADLINE_EXCEEDED: the request was not received in time
    413: 8,  # RESOURCE_EXHAUSTED: body over the limit
    429: 8,  # RESOURCE_EXHAUSTED: the edge's local rate limit
    431: 3,  # INVALID_ARGUMENT: headers over the limit
    502: 14,  # UNAVAILABLE: the Gateway reset the stream
    503: 14,  # UNAVAILABLE: the Gateway is down or overloaded, or the edge is
    504: 4,  # DEADLINE_EXCEEDED: the Gateway did not answer in time
}
# The gRPC status of the edge's own error replies to gRPC and gRPC-Web callers, where Envoy's
# default (its HTTP-to-gRPC table) would say UNKNOWN or UNAVAILABLE.
_GRPC_ERROR_CODES: Mapping[int, int] = {
    400: 3,  # INVALID_ARGUMENT
    413: 8,  # RESOURCE_EXHAUSTED: body over the limit
    429: 8,  # RESOURCE_EXHAUSTED: the edge's local rate limit
    431: 3,  # INVALID_ARGUMENT: headers over the limit
}


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """Every limit of the edge, from the settings (and Envoy's edge best practices)."""

    max_grpc_request_bytes: int
    max_json_request_bytes: int
    max_response_bytes: int = _MAX_RESPONSE_BYTES
    connection_buffer_bytes: int = 32 * _KIB
    max_request_headers_kib: int = 32
    max_headers_count: int = 100
    http2_max_concurrent_streams: int = 100
    http2_stream_window_bytes: int = 64 * _KIB
    http2_connection_window_bytes: int = 1024 * _KIB
    request_headers_timeout_seconds: float = 10.0
    request_timeout_seconds: float = 30.0
    connection_idle_timeout_seconds: float = 300.0
    unary_timeout_seconds: float = 30.0
    upstream_connect_timeout_seconds: float = 2.0

    @classmethod
    def from_settings(cls, settings: Settings) -> EdgeLimits:
        """The Gateway's largest acceptable request, per encoding."""
        largest_field = max(settings.max_message_bytes, settings.max_comment_bytes)
        return cls(
            max_grpc_request_bytes=largest_field + _FIELD_OVERHEAD_BYTES,
            max_json_request_bytes=largest_field * _JSON_ESCAPE_FACTOR + _FIELD_OVERHEAD_BYTES,
        )


def allowed_origins(settings: Settings) -> list[str]:
    """The CORS allow-list: exact origins, without a trailing slash."""
    origins = [o.strip().rstrip("/") for o in settings.edge_allowed_origins.split(",")]
    return [o for o in origins if o]


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _typed(kind: str, **fields: Any) -> dict[str, Any]:
    return {"@type": _TYPE + kind, **fields}


def _socket(address: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": port}}


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"not a host:port address: {address!r}")
    return host.strip("[]"), int(port)


def _always(runtime_key: str) -> dict[str, Any]:
    return {
        "runtime_key": runtime_key,
        "default_value": {"numerator": 100, "denominator": "HUNDRED"},
    }


def _status_is(code: int) -> dict[str, Any]:
    return {
        "status_code_filter": {
            "comparison": {
                "op": "EQ",
                "value": {"default_value": code, "runtime_key": f"edge.local_reply.{code}"},
            }
        }
    }


def _header_present(name: str, *, present: bool) -> dict[str, Any]:
    return {"header_filter": {"header": {"name": name, "present_match": present}}}


# A gRPC or gRPC-Web caller (the grpc_web filter has already made gRPC-Web `application/grpc`);
# a REST call has become `application/grpc` too once transcoded, but keeps its original path.
_IS_GRPC_CALLER = {
    "and_filter": {
        "filters": [
            {
                "header_filter": {
                    "header": {
                        "name": "content-type",
                        "string_match": {"prefix": "application/grpc"},
                    }
                }
            },
            _header_present("x-envoy-original-path", present=False),
        ]
    }
}


def _grpc_error(http_status: int, code: int, message: str) -> dict[str, Any]:
    """A gRPC caller's reply for `http_status`: headers only (a body would be read as a message
    frame), with grpc-status and, unless the reply has one, grpc-message."""
    return {
        "filter": {"and_filter": {"filters": [_status_is(http_status), _IS_GRPC_CALLER]}},
        "headers_to_add": [
            {
                "header": {"key": "grpc-status", "value": str(code)},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            },
            {
                "header": {"key": "grpc-message", "value": message},
                "append_action": "ADD_IF_ABSENT",
            },
        ],
        "body_format_override": {"text_format": ""},
    }


def _local_replies(limits: EdgeLimits) -> dict[str, Any]:
    """The edge's own error replies: gRPC(-Web) callers get the right grpc-status, REST callers
    a JSON body shaped like the Gateway's errors (google.rpc.Status: code, message)."""
    messages = {
        400: "malformed gRPC request",
        413: f"request over the edge's limit of {limits.max_grpc_request_bytes} bytes",
        429: "too many requests at the edge; retry after 1 s",
        431: "request headers over the edge's limit",
    }
    mappers = [
        _grpc_error(http_status, code, messages[http_status])
        for http_status, code in _GRPC_ERROR_CODES.items()
    ]
    # Any other reply to a gRPC caller keeps Envoy's gRPC status mapping.
    mappers.append({"filter": _IS_GRPC_CALLER})
    for http_status, code in _JSON_ERROR_CODES.items():
        message = "%LOCAL_REPLY_BODY%"
        if http_status == 413:
            message = f"request over the edge's limit of {limits.max_json_request_bytes} bytes"
        mappers.append(
            {
                "filter": _status_is(http_status),
                "body_format_override": {"json_format": {"code": code, "message": message}},
            }
        )
    return {"mappers": mappers}


def _cors(settings: Settings) -> dict[str, Any]:
    return _typed(
        "extensions.filters.http.cors.v3.CorsPolicy",
        allow_origin_string_match=[{"exact": origin} for origin in allowed_origins(settings)],
        allow_methods="GET, POST, DELETE, OPTIONS",
        allow_headers=(
            "authorization, content-type, x-request-id, x-grpc-web, x-user-agent, grpc-timeout, "
            "connect-protocol-version, connect-timeout-ms"
        ),
        expose_headers=(
            "grpc-status, grpc-message, grpc-status-details-bin, x-request-id, retry-after, "
            "x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset"
        ),
        max_age="600",
        allow_credentials=False,
        # A preflight from an origin not on the list is answered here, without CORS headers,
        # instead of reaching the Gateway.
        forward_not_matching_preflights=False,
    )


def _buffer_limit(max_bytes: int) -> dict[str, Any]:
    return _typed(
        "extensions.filters.http.buffer.v3.BufferPerRoute", buffer={"max_request_bytes": max_bytes}
    )


def _stream_route(settings: Settings) -> dict[str, Any]:
    # A streamed answer is never cut by a total timeout, only by silence (no byte for
    # edge_stream_idle_timeout_seconds) or by the client's own grpc-timeout, honoured up to the
    # Gateway's turn timeout.
    return {
        "cluster": GATEWAY_CLUSTER,
        "timeout": "0s",
        "idle_timeout": _seconds(settings.edge_stream_idle_timeout_seconds),
        "max_stream_duration": {"grpc_timeout_header_max": _seconds(settings.turn_timeout_seconds)},
    }


def _unary_route(limits: EdgeLimits) -> dict[str, Any]:
    return {
        "cluster": GATEWAY_CLUSTER,
        "timeout": _seconds(limits.unary_timeout_seconds),
        "max_stream_duration": {"grpc_timeout_header_max": _seconds(limits.unary_timeout_seconds)},
    }


def _disabled() -> dict[str, Any]:
    return _typed("config.route.v3.FilterConfig", disabled=True)


def _routes(settings: Settings, limits: EdgeLimits) -> list[dict[str, Any]]:
    """Matched on the path as the client sent it (REST or gRPC): the transcoder keeps the
    route, so CORS, the body limit and the timeouts are chosen per API path."""
    json_body_limit = {"envoy.filters.http.buffer": _buffer_limit(limits.max_json_request_bytes)}
    routes: list[dict[str, Any]] = [
        {"name": "chat-grpc", "match": {"path": CHAT_PATH}, "route": _stream_route(settings)},
        {
            # Human handoff (docs/handoff.md): a watch stays open like an answer's stream.
            "name": "watch-grpc",
            "match": {"path": WATCH_PATH},
            "route": _stream_route(settings),
        },
        {
            "name": "operator-grpc",
            "match": {"prefix": f"/{OPERATOR_SERVICE}/"},
            "route": _unary_route(limits),
        },
        {
            "name": "gateway-grpc",
            "match": {"prefix": f"/{GATEWAY_SERVICE}/"},
            "route": _unary_route(limits),
        },
        {
            "name": "chat-rest",
            "match": {"path": REST_CHAT_PATH},
            "route": _stream_route(settings),
            "typed_per_filter_config": json_body_limit,
        },
        {
            "name": "gateway-rest",
            "match": {"prefix": REST_PREFIX},
            "route": _unary_route(limits),
            "typed_per_filter_config": json_body_limit,
        },
        {
            # The internal services are never reachable through the edge.
            "name": "internal-services",
            "match": {"prefix": "/chatplane."},
            "direct_response": {"status": 404, "body": {"inline_string": "no such service"}},
        },
    ]
    if settings.web_address:
        routes.append(
            {
                # The web chat's static files: same origin as the API, no API filters.
                "name": "web",
                "match": {"prefix": "/"},
                "route": {
                    "cluster": WEB_CLUSTER,
                    "timeout": _seconds(limits.unary_timeout_seconds),
                },
                "typed_per_filter_config": {
                    "envoy.filters.http.buffer": _disabled(),
                    "envoy.filters.http.grpc_json_transcoder": _disabled(),
                },
            }
        )
    return routes


def _http_filters(
    settings: Settings, limits: EdgeLimits, descriptor_path: Path
) -> list[dict[str, Any]]:
    return [
        {
            "name": "envoy.filters.http.grpc_web",
            "typed_config": _typed("extensions.filters.http.grpc_web.v3.GrpcWeb"),
        },
        {
            "name": "envoy.filters.http.cors",
            "typed_config": _typed("extensions.filters.http.cors.v3.Cors"),
        },
        {
            # First line of defence, before any transcoding work; per-principal limits are the
            # Gateway's.
            "name": "envoy.filters.http.local_ratelimit",
            "typed_config": _typed(
                "extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                stat_prefix="edge_rate_limit",
                token_bucket={
                    "max_tokens": settings.edge_rate_limit_burst,
                    "tokens_per_fill": settings.edge_rate_limit_per_second,
                    "fill_interval": "1s",
                },
                filter_enabled=_always("edge.rate_limit.enabled"),
                filter_enforced=_always("edge.rate_limit.enforced"),
                rate_limited_as_resource_exhausted=True,
                enable_x_ratelimit_headers="DRAFT_VERSION_03",
                response_headers_to_add=[
                    {
                        "header": {"key": "retry-after", "value": "1"},
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    }
                ],
            ),
        },
        {
            # The request body limit, on the bytes as received: the gRPC(-Web) routes allow the
            # Gateway's largest protobuf request, the REST route its largest JSON encoding.
            "name": "envoy.filters.http.buffer",
            "typed_config": _typed(
                "extensions.filters.http.buffer.v3.Buffer",
                max_request_bytes=limits.max_grpc_request_bytes,
            ),
        },
        {
            "name": "envoy.filters.http.lua",
            "typed_config": _typed(
                "extensions.filters.http.lua.v3.Lua",
                default_source_code={"inline_string": GRPC_FRAME_CHECK.read_text()},
            ),
        },
        {
            "name": "envoy.filters.http.grpc_json_transcoder",
            "typed_config": _typed(
                "extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
                proto_descriptor=str(descriptor_path),
                services=[GATEWAY_SERVICE, OPERATOR_SERVICE],
                # Only the paths of the contracts' google.api.http annotations.
                auto_mapping=False,
                match_incoming_request_route=True,
                convert_grpc_status=True,
                max_request_body_size=limits.max_json_request_bytes,
                max_response_body_size=limits.max_response_bytes,
                print_options={
                    "add_whitespace": False,
                    "always_print_primitive_fields": True,
                    "always_print_enums_as_ints": False,
                    "preserve_proto_field_names": False,
                    "stream_sse_style_delimited": True,
                },
                request_validation_options={
                    # A REST path or method the contracts do not define is 404 here.
                    "reject_unknown_method": True,
                    "reject_unknown_query_parameters": True,
                    "reject_binding_body_field_collisions": True,
                },
            ),
        },
        {
            "name": "envoy.filters.http.router",
            "typed_config": _typed("extensions.filters.http.router.v3.Router"),
        },
    ]


def _access_log(path: Path) -> list[dict[str, Any]]:
    """One JSON line per request: no bodies and no credentials, like the services' logs."""
    return [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": _typed(
                "extensions.access_loggers.file.v3.FileAccessLog",
                path=str(path),
                log_format={
                    "json_format": {
                        "time": "%START_TIME%",
                        "service": "edge",
                        "request_id": "%REQ(X-REQUEST-ID)%",
                        "method": "%REQ(:METHOD)%",
                        "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
                        "protocol": "%PROTOCOL%",
                        "content_type": "%REQ(CONTENT-TYPE)%",
                        "status": "%RESPONSE_CODE%",
                        "grpc_status": "%GRPC_STATUS(NUMBER)%",
                        "flags": "%RESPONSE_FLAGS%",
                        "details": "%RESPONSE_CODE_DETAILS%",
                        "duration_ms": "%DURATION%",
                        "bytes_received": "%BYTES_RECEIVED%",
                        "bytes_sent": "%BYTES_SENT%",
                        "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
                        "upstream": "%UPSTREAM_HOST%",
                    }
                },
            ),
        }
    ]


def _connection_manager(
    settings: Settings, limits: EdgeLimits, descriptor_path: Path, access_log_path: Path
) -> dict[str, Any]:
    return _typed(
        "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix=LISTENER,
        # HTTP/1.1 (browsers, curl) and HTTP/2 with prior knowledge (gRPC clients) on one port.
        codec_type="AUTO",
        use_remote_address=True,
        # Keep a caller's x-request-id (the API documents it), add one otherwise, and return it.
        preserve_external_request_id=True,
        always_set_request_id_in_response=True,
        normalize_path=True,
        merge_slashes=True,
        path_with_escaped_slashes_action="REJECT_REQUEST",
        strip_any_host_port=True,
        server_name="chatplane-edge",
        stream_idle_timeout=_seconds(settings.edge_stream_idle_timeout_seconds),
        request_timeout=_seconds(limits.request_timeout_seconds),
        request_headers_timeout=_seconds(limits.request_headers_timeout_seconds),
        max_request_headers_kb=limits.max_request_headers_kib,
        common_http_protocol_options={
            "idle_timeout": _seconds(limits.connection_idle_timeout_seconds),
            "headers_with_underscores_action": "REJECT_REQUEST",
            "max_headers_count": limits.max_headers_count,
        },
        http_protocol_options={"accept_http_10": False},
        http2_protocol_options={
            "max_concurrent_streams": limits.http2_max_concurrent_streams,
            "initial_stream_window_size": limits.http2_stream_window_bytes,
            "initial_connection_window_size": limits.http2_connection_window_bytes,
        },
        local_reply_config=_local_replies(limits),
        access_log=_access_log(access_log_path),
        route_config={
            "name": "chatplane",
            "virtual_hosts": [
                {
                    "name": "chatplane",
                    "domains": ["*"],
                    "routes": _routes(settings, limits),
                    "typed_per_filter_config": {"envoy.filters.http.cors": _cors(settings)},
                }
            ],
        },
        http_filters=_http_filters(settings, limits, descriptor_path),
    )


def _cluster(name: str, address: str, limits: EdgeLimits, *, http2: bool) -> dict[str, Any]:
    host, port = _split_address(address)
    protocol = (
        {
            "http2_protocol_options": {
                "initial_stream_window_size": limits.http2_stream_window_bytes,
                "initial_connection_window_size": limits.http2_connection_window_bytes,
            }
        }
        if http2
        else {"http_protocol_options": {}}
    )
    return {
        "name": name,
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": _seconds(limits.upstream_connect_timeout_seconds),
        "per_connection_buffer_limit_bytes": limits.connection_buffer_bytes,
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _typed(
                "extensions.upstreams.http.v3.HttpProtocolOptions",
                explicit_http_config=protocol,
                common_http_protocol_options={
                    "idle_timeout": _seconds(limits.connection_idle_timeout_seconds)
                },
            )
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(host, port)}}]}],
        },
    }


def _overload_manager(settings: Settings) -> dict[str, Any]:
    heap = "envoy.resource_monitors.fixed_heap"
    connections = "envoy.resource_monitors.global_downstream_max_connections"

    def action(name: str, threshold: float) -> dict[str, Any]:
        return {"name": name, "triggers": [{"name": heap, "threshold": {"value": threshold}}]}

    return {
        "refresh_interval": "0.25s",
        "resource_monitors": [
            {
                "name": heap,
                "typed_config": _typed(
                    "extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
                    max_heap_size_bytes=settings.edge_max_heap_bytes,
                ),
            },
            {
                "name": connections,
                "typed_config": _typed(
                    "extensions.resource_monitors.downstream_connections.v3."
                    "DownstreamConnectionsConfig",
                    max_active_downstream_connections=settings.edge_max_connections,
                ),
            },
        ],
        "actions": [
            action("envoy.overload_actions.shrink_heap", 0.95),
            action("envoy.overload_actions.stop_accepting_requests", 0.98),
        ],
    }


def render(
    settings: Settings,
    *,
    descriptor_path: Path,
    access_log_path: Path,
) -> dict[str, Any]:
    """The whole bootstrap configuration as a dict (Envoy's v3 API)."""
    limits = EdgeLimits.from_settings(settings)
    clusters = [_cluster(GATEWAY_CLUSTER, settings.gateway_address, limits, http2=True)]
    if settings.web_address:
        clusters.append(_cluster(WEB_CLUSTER, settings.web_address, limits, http2=False))
    return {
        "node": {"id": "chatplane-edge", "cluster": "chatplane"},
        # Admin (stats, config dump, /ready) on loopback only, never on the edge's address.
        "admin": {"address": _socket("127.0.0.1", settings.edge_admin_port)},
        "overload_manager": _overload_manager(settings),
        "static_resources": {
            "listeners": [
                {
                    "name": LISTENER,
                    "address": _socket(settings.edge_host, settings.edge_port),
                    "per_connection_buffer_limit_bytes": limits.connection_buffer_bytes,
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.connection_limit",
                                    "typed_config": _typed(
                                        "extensions.filters.network.connection_limit.v3."
                                        "ConnectionLimit",
                                        stat_prefix=LISTENER,
                                        max_connections=settings.edge_max_connections,
                                    ),
                                },
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": _connection_manager(
                                        settings, limits, descriptor_path, access_log_path
                                    ),
                                },
                            ]
                        }
                    ],
                }
            ],
            "clusters": clusters,
        },
    }


def to_yaml(config: Mapping[str, Any]) -> str:
    """The configuration as YAML, in the order it was built."""
    return yaml.safe_dump(dict(config), sort_keys=False, width=100)
