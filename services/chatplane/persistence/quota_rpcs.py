"""PersistenceService's token quota RPCs (ReserveQuota, SettleQuota, SetQuota, GetQuota):
request checks and proto ⇄ domain around the store's `TokenQuotaLedger` (docs/quotas.md)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import grpc

from chatplane.common import errors
from chatplane.common.ids import is_valid_id
from chatplane.common.timestamps import timestamp_of
from chatplane.persistence.store.quota import TokenQuota, TokenQuotaLedger
from chatplane.v1 import persistence_pb2

Context = grpc.aio.ServicerContext[Any, Any]

_MAX_TENANT_CHARS = 256
# A reservation outlives any turn (turn_timeout_seconds) but not a day.
MAX_RESERVATION_LEASE = timedelta(hours=6)
DEFAULT_RESERVATION_LEASE = timedelta(minutes=10)
# Far more than any model's context + output, far less than what overflows a bigint sum.
MAX_TOKENS = 10**12


def quota_proto(quota: TokenQuota) -> persistence_pb2.TokenQuota:
    """The wire form of a tenant's quota and usage."""
    reset = timestamp_of(quota.reset_time)
    return persistence_pb2.TokenQuota(
        tenant_id=quota.tenant_id,
        tokens_per_day=quota.tokens_per_day,
        used_tokens=quota.used_tokens,
        reserved_tokens=quota.reserved_tokens,
        reset_time=reset,
    )


def _tenant(value: str) -> str:
    if not value:
        raise errors.InvalidArgument("tenant_id", "required")
    if len(value) > _MAX_TENANT_CHARS:
        raise errors.InvalidArgument("tenant_id", f"must be at most {_MAX_TENANT_CHARS} characters")
    return value


def _tokens(value: int, field: str) -> int:
    if not 0 <= value <= MAX_TOKENS:
        raise errors.InvalidArgument(field, f"must be between 0 and {MAX_TOKENS}")
    return value


def _reservation_id(value: str) -> str:
    if not is_valid_id(value):
        raise errors.InvalidArgument("reservation_id", "must be a UUID in canonical form")
    return value


class QuotaRpcs:
    """The quota RPCs, mixed into the PersistenceService servicer (which sets `_store`)."""

    @property
    def _ledger(self) -> TokenQuotaLedger:
        ledger: TokenQuotaLedger = vars(self)["_store"]
        return ledger

    async def ReserveQuota(  # noqa: N802 (the RPC name)
        self, request: persistence_pb2.ReserveQuotaRequest, context: Context
    ) -> persistence_pb2.ReserveQuotaResponse:
        tenant = _tenant(request.tenant_id)
        lease = DEFAULT_RESERVATION_LEASE
        if request.lease_ms:
            # Checked as an integer first: timedelta overflows on extreme values.
            max_ms = MAX_RESERVATION_LEASE // timedelta(milliseconds=1)
            if not 0 < request.lease_ms <= max_ms:
                raise errors.InvalidArgument("lease_ms", f"must be between 1 and {max_ms}")
            lease = timedelta(milliseconds=request.lease_ms)
        reservation = await self._ledger.reserve_tokens(
            tenant,
            _reservation_id(request.reservation_id),
            _tokens(request.tokens, "tokens"),
            lease,
        )
        return persistence_pb2.ReserveQuotaResponse(
            granted=reservation.granted,
            reserved_tokens=reservation.reserved_tokens,
            quota=quota_proto(reservation.quota),
        )

    async def SettleQuota(  # noqa: N802 (the RPC name)
        self, request: persistence_pb2.SettleQuotaRequest, context: Context
    ) -> persistence_pb2.SettleQuotaResponse:
        used = _tokens(request.input_tokens, "input_tokens") + _tokens(
            request.output_tokens, "output_tokens"
        )
        quota = await self._ledger.settle_tokens(
            _tenant(request.tenant_id), _reservation_id(request.reservation_id), used
        )
        return persistence_pb2.SettleQuotaResponse(quota=quota_proto(quota))

    async def SetQuota(  # noqa: N802 (the RPC name)
        self, request: persistence_pb2.SetQuotaRequest, context: Context
    ) -> persistence_pb2.SetQuotaResponse:
        quota = await self._ledger.set_token_quota(
            _tenant(request.tenant_id), _tokens(request.tokens_per_day, "tokens_per_day")
        )
        return persistence_pb2.SetQuotaResponse(quota=quota_proto(quota))

    async def GetQuota(  # noqa: N802 (the RPC name)
        self, request: persistence_pb2.GetQuotaRequest, context: Context
    ) -> persistence_pb2.GetQuotaResponse:
        quota = await self._ledger.get_token_quota(_tenant(request.tenant_id))
        return persistence_pb2.GetQuotaResponse(quota=quota_proto(quota))
