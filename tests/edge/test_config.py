"""The edge's configuration, envoy/envoy.yaml filled in from the settings: accepted by
`envoy --mode validate` for the settings a deployment would use, with the limits the edge
promises; and the local rate limit (a second Envoy with a tiny bucket in front of the shared
stack's Gateway)."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
import yaml

from chatplane.common.settings import Settings
from chatplane.edge.app import write_config
from chatplane.edge.envoy_process import envoy_binary
from chatplane.launcher import ServiceProcess
from chatplane.launcher.stack import EDGE
from chatplane.v1 import gateway_pb2, gateway_pb2_grpc
from tests.edge.edge_client import EdgeStack

SETTINGS = {
    "default": {},
    "with web and origins": {
        "web_address": "127.0.0.1:9000",
        "edge_allowed_origins": "https://chat.example.com, http://localhost:5173/",
        "gateway_address": "gateway.internal:50051",
        "edge_host": "0.0.0.0",
    },
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_envoy_validates_the_filled_in_config(name: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, **SETTINGS[name])  # type: ignore[arg-type]
    config_path = write_config(settings)
    result = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(config_path), "-l", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
    assert "deprecated" not in (result.stdout + result.stderr).lower()


def _listener_manager(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    manager: dict[str, Any] = listener["filter_chains"][0]["filters"][-1]["typed_config"]
    return manager


def test_config_keeps_the_edge_promises(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, edge_allowed_origins="https://a.example")
    config = yaml.safe_load(write_config(settings).read_text())
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    manager = _listener_manager(config)
    assert manager["use_remote_address"] is True
    options = manager["common_http_protocol_options"]
    assert options["headers_with_underscores_action"] == "REJECT_REQUEST"
    filters = [f["name"].rsplit(".", 1)[1] for f in manager["http_filters"]]
    assert filters[:2] == ["grpc_web", "cors"] and filters[-1] == "router"
    assert filters.index("health_check") < filters.index("local_ratelimit")
    assert filters.index("local_ratelimit") < filters.index("grpc_json_transcoder")
    cors = manager["route_config"]["virtual_hosts"][0]["typed_per_filter_config"]
    origins = cors["envoy.filters.http.cors"]["allow_origin_string_match"]
    assert origins == [{"exact": "https://a.example"}]
    transcoder = next(f for f in manager["http_filters"] if f["name"].endswith("transcoder"))
    assert transcoder["typed_config"]["print_options"]["stream_sse_style_delimited"] is True
    assert transcoder["typed_config"]["convert_grpc_status"] is True
    assert Path(transcoder["typed_config"]["proto_descriptor"]).is_file()
    lua = next(f for f in manager["http_filters"] if f["name"].endswith("lua"))
    assert Path(lua["typed_config"]["default_source_code"]["filename"]).is_file()
    routes = {r["name"]: r for r in manager["route_config"]["virtual_hosts"][0]["routes"]}
    for stream in ("chat-grpc", "chat-rest", "resume-grpc", "resume-rest", "watch-grpc"):
        assert routes[stream]["route"]["timeout"] == "0s"
        assert routes[stream]["route"]["max_stream_duration"]["grpc_timeout_header_max"]
    assert routes["resume-grpc"]["match"]["path"] == "/chatplane.v1.GatewayService/ResumeChat"
    # Envoy's safe_regex matches the whole path.
    resume_rest = re.compile(routes["resume-rest"]["match"]["safe_regex"]["regex"])
    assert resume_rest.fullmatch("/v1/messages/5b0f2c1e-2f4a-4d6b-9c1d-0a1b2c3d4e5f/resume")
    assert not resume_rest.fullmatch("/v1/messages/x/feedback")
    names = list(routes)
    assert names.index("resume-rest") < names.index("gateway-rest")
    # UploadDocument has its own body limit (a whole document) and the ingestion's timeout.
    upload = routes["upload-grpc"]
    assert names.index("upload-grpc") < names.index("gateway-grpc")
    assert upload["route"]["timeout"] == "600s"
    buffer = upload["typed_per_filter_config"]["envoy.filters.http.buffer"]["buffer"]
    assert buffer["max_request_bytes"] == 4 * 1024 * 1024 + 5
    monitors = [m["name"] for m in config["overload_manager"]["resource_monitors"]]
    assert "envoy.resource_monitors.fixed_heap" in monitors
    access_log = manager["access_log"][0]["typed_config"]["path"]
    assert access_log == str((tmp_path / "logs" / "edge-access.log").resolve())


@pytest_asyncio.fixture(loop_scope="package")
async def tight_edge(edge_stack: EdgeStack, tmp_path: Path) -> AsyncIterator[str]:
    """A second Envoy in front of the same Gateway whose local rate limit is 2 requests
    (refilled by 1 per second); its address."""
    args = [
        "--edge-port", "0",
        "--gateway-address", edge_stack.gateway_address,
        "--edge-rate-limit-burst", "2",
        "--edge-rate-limit-per-second", "1",
    ]  # fmt: skip
    env = {**os.environ, "CHATPLANE_DATA_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    edge = await ServiceProcess.start(EDGE, args, env, tmp_path / "logs" / "edge.log")
    try:
        yield f"127.0.0.1:{edge.port}"
    finally:
        assert await edge.stop(timeout=10) == 0


@pytest.mark.integration
@pytest.mark.asyncio(loop_scope="package")
async def test_local_rate_limit_answers_429_and_resource_exhausted(
    edge_stack: EdgeStack, tight_edge: str
) -> None:
    # A principal of its own, far from the Gateway's per-user limit: the 429s are the edge's.
    key = await edge_stack.new_key("rate-limit-tenant", "rate-limit-user")
    headers = {"authorization": f"Bearer {key}"}
    metadata = tuple(headers.items())
    async with httpx.AsyncClient(timeout=10) as http:
        statuses = [
            (await http.get(f"http://{tight_edge}/v1/conversations", headers=headers))
            for _ in range(4)
        ]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited, [r.status_code for r in statuses]
    assert limited[0].json()["code"] == 8
    assert limited[0].headers["retry-after"] == "1"
    async with grpc.aio.insecure_channel(tight_edge) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as native:
            for _ in range(20):
                await stub.ListConversations(
                    gateway_pb2.ListConversationsRequest(), metadata=metadata, timeout=5
                )
    assert native.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
