"""A turn's token reservation made by its BeginTurn, or by a ReserveQuota call of its own
when Persistence predates BeginTurnRequest.reserve_quota (a rolling upgrade)."""

from __future__ import annotations

import pytest

from chatplane.common import errors
from chatplane.gateway.token_quota import Admission
from chatplane.gateway.turn_overlap import admitted
from chatplane.internal.v1 import quota_pb2, turn_pb2

REQUEST = quota_pb2.ReserveQuotaRequest(tenant_id="t", reservation_id="r", tokens=10)


class OldPersistence:
    """Answers ReserveQuota (the separate call) with a fixed outcome and counts the calls."""

    @property
    def quota(self) -> OldPersistence:
        """Stands in for PersistenceClient: the one service it fakes is itself."""
        return self

    def __init__(self, granted: bool) -> None:
        self.granted = granted
        self.calls: list[quota_pb2.ReserveQuotaRequest] = []

    async def ReserveQuota(  # noqa: N802 - the RPC's name
        self, request: quota_pb2.ReserveQuotaRequest, timeout: float
    ) -> quota_pb2.ReserveQuotaResponse:
        self.calls.append(request)
        return quota_pb2.ReserveQuotaResponse(
            granted=self.granted, quota=quota_pb2.TokenQuota(tenant_id="t", tokens_per_day=5)
        )


def _begun(quota: quota_pb2.ReserveQuotaResponse | None) -> turn_pb2.BeginTurnResponse:
    response = turn_pb2.BeginTurnResponse(owner=True, conversation_id="c")
    if quota is not None:
        response.quota.CopyFrom(quota)
    return response


async def test_the_outcome_comes_from_begin_turn_without_another_call() -> None:
    persistence = OldPersistence(granted=False)
    admission = Admission(persistence, REQUEST, 1.0)  # type: ignore[arg-type]
    begin = turn_pb2.BeginTurnRequest()
    admission.fold_into(begin)
    assert begin.reserve_quota == REQUEST
    granted = quota_pb2.ReserveQuotaResponse(granted=True, reserved_tokens=10)
    begun = _begun(granted)
    admission.resolve(begun)
    released: list[bool] = []

    async def release() -> None:
        released.append(True)

    await admitted(admission, begun, release)
    assert persistence.calls == [] and released == []
    assert await admission.settled() == granted


async def test_an_older_persistence_gets_a_separate_call_and_a_refusal_releases_the_turn() -> None:
    persistence = OldPersistence(granted=False)
    admission = Admission(persistence, REQUEST, 1.0)  # type: ignore[arg-type]
    begun = _begun(None)
    admission.resolve(begun)
    released: list[bool] = []

    async def release() -> None:
        released.append(True)

    with pytest.raises(errors.QuotaExceeded):
        await admitted(admission, begun, release)
    assert persistence.calls == [REQUEST]
    assert released == [True]
    assert await admission.settled() is None


async def test_a_reservation_never_made_has_nothing_to_settle() -> None:
    admission = Admission(OldPersistence(granted=True), REQUEST, 1.0)  # type: ignore[arg-type]
    assert await admission.settled() is None
