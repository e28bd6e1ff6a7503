"""Filling envoy/envoy.yaml in: every placeholder of the file has a value, the values follow the
settings, and a placeholder without a value or a bad address stops the edge with one line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from chatplane.common.errors import ConfigError
from chatplane.common.settings import Settings
from chatplane.edge.envoy_values import (
    TEMPLATE,
    BodyLimits,
    allowed_origins,
    envoy_values,
    fill_in,
)

PATHS = {"descriptor_set": Path("/d/set.binpb"), "access_log": Path("/d/access.log")}


def _filled(settings: Settings) -> dict[str, object]:
    config: dict[str, object] = yaml.safe_load(
        fill_in(TEMPLATE.read_text(), envoy_values(settings, **PATHS))
    )
    return config


def test_every_placeholder_of_the_file_has_a_value_and_no_value_is_unused() -> None:
    placeholders = set(re.findall(r"(?<!\$)\$\{(\w+)\}", TEMPLATE.read_text()))
    assert placeholders == set(envoy_values(Settings(), **PATHS))


def test_the_web_cluster_is_always_there_and_has_an_endpoint_only_with_a_web_address() -> None:
    def web_endpoints(settings: Settings) -> object:
        clusters = _filled(settings)["static_resources"]["clusters"]  # type: ignore[index]
        (web,) = [c for c in clusters if c["name"] == "web"]
        return web["load_assignment"]["endpoints"]

    assert web_endpoints(Settings()) == []
    (locality,) = web_endpoints(Settings(web_address="web.internal:9000"))  # type: ignore[misc]
    address = locality["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert address == {"address": "web.internal", "port_value": 9000}


def test_origins_and_addresses_come_from_the_settings() -> None:
    settings = Settings(
        edge_allowed_origins="https://a.example, https://b.example/",
        gateway_address="[::1]:50051",
    )
    assert allowed_origins(settings) == ["https://a.example", "https://b.example"]
    values = envoy_values(settings, **PATHS)
    assert yaml.safe_load(values["ALLOWED_ORIGINS"]) == [
        {"exact": "https://a.example"},
        {"exact": "https://b.example"},
    ]
    assert (values["GATEWAY_HOST"], values["GATEWAY_PORT"]) == ("::1", "50051")
    assert allowed_origins(Settings()) == []


def test_body_limits_follow_the_gateways_message_limit() -> None:
    limits = BodyLimits.from_settings(Settings(max_message_bytes=1000, max_comment_bytes=10))
    assert limits.grpc_bytes == 1000 + 4096
    assert limits.json_bytes == 6 * 1000 + 4096
    # A whole document: the configured maximum, within one gRPC message of the Gateway.
    assert limits.upload_bytes == 4 * 1024 * 1024 + 5  # default document_max_bytes is 10 MiB
    small = BodyLimits.from_settings(Settings(document_max_bytes=100_000))
    assert small.upload_bytes == 100_000 + 4096


@pytest.mark.parametrize("address", ["gateway", "gateway:port", ":50051", ""])
def test_an_address_that_is_not_host_port_is_a_config_error(address: str) -> None:
    with pytest.raises(ConfigError, match="CHATPLANE_GATEWAY_ADDRESS must be host:port"):
        envoy_values(Settings(gateway_address=address), **PATHS)


def test_a_placeholder_without_a_value_is_a_one_line_config_error() -> None:
    with pytest.raises(ConfigError) as missing:
        fill_in("admin: ${ADMIN_PORT}\nport: ${EDGE_PORT}\n", {"ADMIN_PORT": "0"})
    assert "${EDGE_PORT}" in str(missing.value) and "\n" not in str(missing.value)
    with pytest.raises(ConfigError, match=r"\$\$"):
        fill_in("price: 5 $ each\n", {})
    assert fill_in("literal: $$HOME\n", {}) == "literal: $HOME\n"
