"""The Gateway's side of per-tenant daily token quotas (docs/quotas.md): before a turn runs,
reserve its estimated tokens in the system of record (QuotaService.ReserveQuota, shared
by every Gateway replica); when it ends, settle the reservation with the `usage` event's
counts, or release it. A spent quota refuses the turn with RESOURCE_EXHAUSTED carrying a
google.rpc.QuotaFailure and a RetryInfo delay until the reset (the next UTC midnight)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

import grpc

from chatplane.agent.tokens import estimate_tokens
from chatplane.common import errors
from chatplane.common.ids import new_id
from chatplane.gateway.metrics import REJECTIONS
from chatplane.internal.v1 import quota_pb2, turn_pb2
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import gateway_pb2

_log = logging.getLogger(__name__)

# Seconds a reservation outlives the turn's own deadline before it is swept as abandoned.
_LEASE_MARGIN_SECONDS = 60.0

Budget = Callable[[float], float]


@dataclass(slots=True)
class TurnTokens:
    """What one turn consumed, as seen in the events relayed to the client."""

    question_tokens: int
    usage: tuple[int, int] | None = None
    replayed: bool = False
    answer_chars: list[str] = field(default_factory=list)

    def observe(self, event: gateway_pb2.ChatResponse) -> None:
        """Take note of one relayed event."""
        kind = event.WhichOneof("event")
        if kind == "started" and event.started.replayed:
            self.replayed = True
        elif kind == "delta":
            self.answer_chars.append(event.delta.text)
        elif kind == "usage":
            usage = event.usage
            # Cached prompt tokens are input tokens too (Anthropic counts them apart).
            self.usage = (
                usage.input_tokens
                + usage.cache_read_input_tokens
                + usage.cache_creation_input_tokens,
                usage.output_tokens,
            )

    def charge(self) -> tuple[int, int]:
        """(input, output) tokens to settle: the model's reported usage; without one (the
        client left or the model failed mid-answer) an estimate of the question and of the
        text relayed; nothing for a replayed answer or one that never started."""
        if self.replayed:
            return 0, 0
        if self.usage is not None:
            return self.usage
        if not self.answer_chars:
            return 0, 0
        return self.question_tokens, estimate_tokens("".join(self.answer_chars))


class Admission:
    """A turn's reservation, made by its BeginTurn (BeginTurnRequest.reserve_quota, one
    round trip for both) or, from a Persistence that predates that field, by a ReserveQuota
    call right after it. Awaiting it raises QuotaExceeded when refused."""

    def __init__(
        self,
        persistence: PersistenceClient,
        request: quota_pb2.ReserveQuotaRequest,
        timeout: float,
    ) -> None:
        self._persistence = persistence
        self._request = request
        self._timeout = timeout
        # A ReserveQuota call of its own is under way (an older Persistence).
        self._asked = False
        self._outcome: asyncio.Future[quota_pb2.ReserveQuotaResponse] = (
            asyncio.get_running_loop().create_future()
        )

    def fold_into(self, begin: turn_pb2.BeginTurnRequest) -> None:
        """Asks the BeginTurn call to make the reservation first."""
        begin.reserve_quota.CopyFrom(self._request)

    def resolve(self, begun: turn_pb2.BeginTurnResponse) -> None:
        """Takes the reservation's outcome from the BeginTurn response (or asks for it now)."""
        if self._outcome.done():
            return
        if begun.HasField("quota"):
            self._outcome.set_result(begun.quota)
            return
        call = asyncio.ensure_future(
            self._persistence.quota.ReserveQuota(self._request, timeout=self._timeout)
        )
        self._asked = True
        call.add_done_callback(self._take)

    def _take(self, call: asyncio.Future[quota_pb2.ReserveQuotaResponse]) -> None:
        if self._outcome.done():
            return
        if call.cancelled():
            self._outcome.cancel()
        elif (error := call.exception()) is not None:
            self._outcome.set_exception(error)
        else:
            self._outcome.set_result(call.result())

    async def __call__(self) -> None:
        response = await asyncio.shield(self._outcome)
        if not response.granted:
            REJECTIONS.labels("quota").inc()
            raise quota_exceeded(response.quota)

    async def settled(self) -> quota_pb2.ReserveQuotaResponse | None:
        """The granted reservation to settle, None when there is none (never made, refused,
        failed, or cancelled with the turn)."""
        if not self._outcome.done() and not self._asked:
            self._outcome.cancel()
            return None
        try:
            response = await asyncio.shield(self._outcome)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            return None
        return response if response.granted else None


class TokenQuotaGate:
    """Reserves and settles turns' tokens against their tenant's daily quota."""

    def __init__(
        self,
        persistence: PersistenceClient,
        *,
        reserve_tokens: int,
        max_output_tokens: int,
        turn_timeout_seconds: float,
        call_timeout_seconds: float,
    ) -> None:
        self._persistence = persistence
        self._reserve_tokens = reserve_tokens
        self._max_output_tokens = max_output_tokens
        self._lease_ms = int((turn_timeout_seconds + _LEASE_MARGIN_SECONDS) * 1000)
        self._call_timeout = call_timeout_seconds
        # Settlements run detached from the client's call, which may already be cancelled.
        self._settling: set[asyncio.Task[None]] = set()

    def estimate(self, text: str) -> int:
        """Tokens to reserve for a turn asking `text`: the configured amount, or the question's
        estimated tokens plus the most the model may answer."""
        if self._reserve_tokens > 0:
            return self._reserve_tokens
        return estimate_tokens(text) + self._max_output_tokens

    async def metered(
        self,
        tenant_id: str,
        text: str,
        budget: Budget,
        events: Callable[[Admission], AsyncGenerator[gateway_pb2.ChatResponse]],
    ) -> AsyncGenerator[gateway_pb2.ChatResponse]:
        """The turn's events, run only when the tenant's quota grants a reservation, which is
        settled with what the turn used however it ends. `events` gets the Admission: its
        BeginTurn makes the reservation, and it awaits the Admission before spending
        anything (docs/chain-latency.md)."""
        reservation_id = new_id()
        admission = Admission(
            self._persistence,
            quota_pb2.ReserveQuotaRequest(
                tenant_id=tenant_id,
                reservation_id=reservation_id,
                tokens=self.estimate(text),
                lease_ms=self._lease_ms,
            ),
            budget(self._call_timeout),
        )
        tokens = TurnTokens(question_tokens=estimate_tokens(text))
        try:
            async with contextlib.aclosing(events(admission)) as turn:
                async for event in turn:
                    tokens.observe(event)
                    yield event
        finally:
            response = await admission.settled()
            if response is not None and response.quota.tokens_per_day:
                # Nothing is recorded for unlimited tenants.
                self._settle_later(tenant_id, reservation_id, tokens)

    def _settle_later(self, tenant_id: str, reservation_id: str, tokens: TurnTokens) -> None:
        input_tokens, output_tokens = tokens.charge()
        request = quota_pb2.SettleQuotaRequest(
            tenant_id=tenant_id,
            reservation_id=reservation_id,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )
        task = asyncio.get_running_loop().create_task(self._settle(request))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, request: quota_pb2.SettleQuotaRequest) -> None:
        try:
            await self._persistence.quota.SettleQuota(request, timeout=self._call_timeout)
        except grpc.aio.AioRpcError as error:
            # The reservation then expires with its lease; the usage of this turn is lost.
            _log.warning(
                "could not settle a token reservation",
                extra={"reservation": request.reservation_id, "code": error.code().name},
            )

    async def drain(self) -> None:
        """Wait for settlements under way (at shutdown)."""
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)


def quota_exceeded(quota: quota_pb2.TokenQuota) -> errors.QuotaExceeded:
    """The QuotaExceeded of a spent quota: its reset time, retry delay and violation."""
    reset = quota.reset_time.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ")
    retry_after = max(0.0, quota.reset_time.ToMilliseconds() / 1000 - time.time())
    description = (
        f"daily token quota of {quota.tokens_per_day} tokens spent"
        f" ({quota.used_tokens} used, {quota.reserved_tokens} reserved); resets at {reset}"
    )
    return errors.QuotaExceeded(
        f"token quota exceeded; resets at {reset}",
        retry_after=retry_after,
        subject=f"tenant:{quota.tenant_id}",
        description=description,
    )
