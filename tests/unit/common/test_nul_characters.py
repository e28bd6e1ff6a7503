"""Requests holding U+0000 in a string field are INVALID_ARGUMENT naming the field (PostgreSQL
text cannot store it): the path the interceptor reports, at any depth."""

from __future__ import annotations

from chatplane.common.interceptors import nul_field
from chatplane.internal.v1 import memory_pb2
from chatplane.v1 import admin_resources_pb2, gateway_pb2


def test_a_clean_request_has_no_nul_field() -> None:
    assert nul_field(gateway_pb2.ChatRequest(conversation_id="c", text="hello")) == ""


def test_a_top_level_string_is_named() -> None:
    assert nul_field(gateway_pb2.ChatRequest(conversation_id="c", text="a\x00b")) == "text"


def test_a_nested_string_is_named_by_its_path() -> None:
    request = memory_pb2.ForgetRequest(tenant_id="t", user_id="u\x00", conversation_id="c")
    assert nul_field(request) == "user_id"
    owner = admin_resources_pb2.Owner(tenant_id="t\x00", user_id="u")
    assert nul_field(admin_resources_pb2.ApiKeyInfo(owner=owner)) == "owner.tenant_id"
