"""BeginTurn with the turn's token reservation in the same call (BeginTurnRequest.reserve_quota):
the Gateway's first token then waits for one Persistence round trip instead of two
(docs/chain-latency.md). The reservation is made first; refused, nothing is begun (a new
conversation is not created); granted, the turn is begun as without it, and a turn that then
fails to begin gives its reservation back."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from chatplane.common import errors
from chatplane.internal.v1 import quota_pb2, turn_pb2

_log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
BeginTurn = Callable[[turn_pb2.BeginTurnRequest, Context], Awaitable[turn_pb2.BeginTurnResponse]]
ReserveQuota = Callable[
    [quota_pb2.ReserveQuotaRequest, Context],
    Awaitable[quota_pb2.ReserveQuotaResponse],
]
SettleQuota = Callable[
    [quota_pb2.SettleQuotaRequest, Context], Awaitable[quota_pb2.SettleQuotaResponse]
]


async def begin_with_reservation(
    request: turn_pb2.BeginTurnRequest,
    context: Context,
    *,
    begin: BeginTurn,
    reserve: ReserveQuota,
    settle: SettleQuota,
) -> turn_pb2.BeginTurnResponse:
    """Reserve, then (if granted) begin; `quota` in the response is the reservation's outcome."""
    reservation = request.reserve_quota
    if reservation.tenant_id != request.owner.tenant_id:
        raise errors.InvalidArgument("reserve_quota.tenant_id", "must be the owner's tenant")
    reserved = await reserve(reservation, context)
    if not reserved.granted:
        return turn_pb2.BeginTurnResponse(quota=reserved)
    plain = turn_pb2.BeginTurnRequest()
    plain.CopyFrom(request)
    plain.ClearField("reserve_quota")
    try:
        response = await begin(plain, context)
    except Exception:
        try:
            await settle(
                quota_pb2.SettleQuotaRequest(
                    tenant_id=reservation.tenant_id, reservation_id=reservation.reservation_id
                ),
                context,
            )
        except Exception:
            # Best effort: the reservation then ends with its lease.
            _log.warning("could not give back the reservation of a turn that failed to begin")
        raise
    response.quota.CopyFrom(reserved)
    return response
