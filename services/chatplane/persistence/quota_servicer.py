"""QuotaService (ReserveQuota, SettleQuota, SetQuota, GetQuota):
request checks and proto ⇄ domain around the store's quota ledger (docs/quotas.md)."""

from __future__ import annotations

from datetime import timedelta

from chatplane.common import errors
from chatplane.common.ids import is_valid_id
from chatplane.common.timestamps import timestamp_of
from chatplane.internal.v1 import quota_pb2, quota_pb2_grpc
from chatplane.persistence.protos import Context, tenant
from chatplane.persistence.store.quota import TokenQuota, TokenQuotas

# A reservation outlives any turn (turn_timeout_seconds) but not a day.
MAX_RESERVATION_LEASE = timedelta(hours=6)
DEFAULT_RESERVATION_LEASE = timedelta(minutes=10)
# Far more than any model's context + output, far less than what overflows a bigint sum.
MAX_TOKENS = 10**12


def quota_proto(quota: TokenQuota) -> quota_pb2.TokenQuota:
    """The wire form of a tenant's quota and usage."""
    return quota_pb2.TokenQuota(
        tenant_id=quota.tenant_id,
        tokens_per_day=quota.tokens_per_day,
        used_tokens=quota.used_tokens,
        reserved_tokens=quota.reserved_tokens,
        reset_time=timestamp_of(quota.reset_time),
    )


def _tokens(value: int, field: str) -> int:
    if not 0 <= value <= MAX_TOKENS:
        raise errors.InvalidArgument(field, f"must be between 0 and {MAX_TOKENS}")
    return value


def _reservation_id(value: str) -> str:
    if not is_valid_id(value):
        raise errors.InvalidArgument("reservation_id", "must be a UUID in canonical form")
    return value


class QuotaServicer(quota_pb2_grpc.QuotaServiceServicer):
    """QuotaService over the store's token quota ledger."""

    def __init__(self, ledger: TokenQuotas) -> None:
        self._ledger = ledger

    async def ReserveQuota(
        self, request: quota_pb2.ReserveQuotaRequest, context: Context
    ) -> quota_pb2.ReserveQuotaResponse:
        tenant_id = tenant(request.tenant_id)
        lease = DEFAULT_RESERVATION_LEASE
        if request.lease_ms:
            # Checked as an integer first: timedelta overflows on extreme values.
            max_ms = MAX_RESERVATION_LEASE // timedelta(milliseconds=1)
            if not 0 < request.lease_ms <= max_ms:
                raise errors.InvalidArgument("lease_ms", f"must be between 1 and {max_ms}")
            lease = timedelta(milliseconds=request.lease_ms)
        reservation = await self._ledger.reserve(
            tenant_id,
            _reservation_id(request.reservation_id),
            _tokens(request.tokens, "tokens"),
            lease,
        )
        return quota_pb2.ReserveQuotaResponse(
            granted=reservation.granted,
            reserved_tokens=reservation.reserved_tokens,
            quota=quota_proto(reservation.quota),
        )

    async def SettleQuota(
        self, request: quota_pb2.SettleQuotaRequest, context: Context
    ) -> quota_pb2.SettleQuotaResponse:
        used = _tokens(request.input_tokens, "input_tokens") + _tokens(
            request.output_tokens, "output_tokens"
        )
        quota = await self._ledger.settle(
            tenant(request.tenant_id), _reservation_id(request.reservation_id), used
        )
        return quota_pb2.SettleQuotaResponse(quota=quota_proto(quota))

    async def SetQuota(
        self, request: quota_pb2.SetQuotaRequest, context: Context
    ) -> quota_pb2.SetQuotaResponse:
        quota = await self._ledger.set_limit(
            tenant(request.tenant_id), _tokens(request.tokens_per_day, "tokens_per_day")
        )
        return quota_pb2.SetQuotaResponse(quota=quota_proto(quota))

    async def GetQuota(
        self, request: quota_pb2.GetQuotaRequest, context: Context
    ) -> quota_pb2.GetQuotaResponse:
        quota = await self._ledger.get(tenant(request.tenant_id))
        return quota_pb2.GetQuotaResponse(quota=quota_proto(quota))
