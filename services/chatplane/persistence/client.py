"""The stubs of Persistence's services on one channel: what a caller (Gateway, Agent, Memory,
CLI) holds instead of one stub per service. Each attribute is the generated async stub of one
focused service (proto/chatplane/internal/v1), so `persistence.turns.BeginTurn(...)` is the
plain gRPC call, with nothing in between."""

from __future__ import annotations

import grpc

from chatplane.internal.v1 import (
    analytics_pb2_grpc,
    audit_pb2_grpc,
    conversation_pb2_grpc,
    data_key_pb2_grpc,
    handoff_pb2_grpc,
    identity_pb2_grpc,
    privacy_pb2_grpc,
    quota_pb2_grpc,
    turn_pb2_grpc,
    variant_registry_pb2_grpc,
)


class PersistenceClient:
    """Async stubs of every Persistence service, sharing `channel`."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.turns: turn_pb2_grpc.TurnServiceAsyncStub = turn_pb2_grpc.TurnServiceStub(channel)
        self.conversations: conversation_pb2_grpc.ConversationServiceAsyncStub = (
            conversation_pb2_grpc.ConversationServiceStub(channel)
        )
        self.identity: identity_pb2_grpc.IdentityServiceAsyncStub = (
            identity_pb2_grpc.IdentityServiceStub(channel)
        )
        self.audit: audit_pb2_grpc.AuditServiceAsyncStub = audit_pb2_grpc.AuditServiceStub(channel)
        self.quota: quota_pb2_grpc.QuotaServiceAsyncStub = quota_pb2_grpc.QuotaServiceStub(channel)
        self.handoff: handoff_pb2_grpc.HandoffServiceAsyncStub = (
            handoff_pb2_grpc.HandoffServiceStub(channel)
        )
        self.analytics: analytics_pb2_grpc.AnalyticsServiceAsyncStub = (
            analytics_pb2_grpc.AnalyticsServiceStub(channel)
        )
        self.privacy: privacy_pb2_grpc.PrivacyServiceAsyncStub = (
            privacy_pb2_grpc.PrivacyServiceStub(channel)
        )
        self.registry: variant_registry_pb2_grpc.VariantRegistryServiceAsyncStub = (
            variant_registry_pb2_grpc.VariantRegistryServiceStub(channel)
        )
        self.data_keys: data_key_pb2_grpc.DataKeyServiceAsyncStub = (
            data_key_pb2_grpc.DataKeyServiceStub(channel)
        )
