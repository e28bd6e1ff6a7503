"""The Persistence process registers every service of its contract (proto/chatplane/internal/v1),
each with its own servicer class, and names each one to health and reflection."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import grpc
from google.protobuf import descriptor_pool

from chatplane.common.settings import Settings
from chatplane.internal.v1 import (
    analytics_pb2,
    audit_pb2,
    conversation_pb2,
    data_key_pb2,
    handoff_pb2,
    identity_pb2,
    privacy_pb2,
    quota_pb2,
    turn_pb2,
    variant_registry_pb2,
)
from chatplane.persistence import service

PERSISTENCE_FILES = (
    analytics_pb2,
    audit_pb2,
    conversation_pb2,
    data_key_pb2,
    handoff_pb2,
    identity_pb2,
    privacy_pb2,
    quota_pb2,
    turn_pb2,
    variant_registry_pb2,
)


def test_every_persistence_service_is_registered_and_named_to_health() -> None:
    contract = {
        svc.full_name
        for module in PERSISTENCE_FILES
        for svc in module.DESCRIPTOR.services_by_name.values()
    }
    assert set(service.SERVICE_NAMES) == contract
    assert len(service.SERVICE_NAMES) == len(service.SERVICES) == 10
    pool = descriptor_pool.Default()
    for name in service.SERVICE_NAMES:
        assert pool.FindServiceByName(name).full_name == name


def test_each_service_has_its_own_servicer_class_and_every_rpc() -> None:
    class Recording:
        """Collects what `add_*_to_server` registers."""

        def __init__(self) -> None:
            self.handlers: list[grpc.GenericRpcHandler] = []

        def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
            self.handlers += handlers

        def add_registered_method_handlers(self, name: str, handlers: dict[str, object]) -> None:
            pass

    # The servicers only keep the store's parts they serve.
    parts = SimpleNamespace(quota=0, api_keys=0, audit=0, handoffs=0, registry=0)
    built = service.servicers(parts, Settings(), object(), object(), object())  # type: ignore[arg-type]
    assert set(built) == {name for name, _ in service.SERVICES}
    classes = [type(servicer) for servicer in built.values()]
    assert len(set(classes)) == len(classes)  # one class per service, no shared mixin chain
    pool = descriptor_pool.Default()
    for (name, add), full_name in zip(service.SERVICES, service.SERVICE_NAMES, strict=True):
        servicer = built[name]
        server = Recording()
        add(servicer, server)  # type: ignore[arg-type]
        assert server.handlers, name
        for method in pool.FindServiceByName(full_name).methods:
            # Implemented by the servicer itself, not left to the generated UNIMPLEMENTED one.
            implementation = getattr(type(servicer), method.name)
            assert "UNIMPLEMENTED" not in inspect.getsource(implementation), (name, method.name)
