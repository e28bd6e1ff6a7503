"""Human handoff in the Gateway (docs/handoff.md): changes a conversation's mode through
Persistence, records each change and operator reply on the handoff topic, keeps the
bot silent while a human answers, and runs the automatic rules."""

from __future__ import annotations

import logging
from collections.abc import Callable

from chatplane import audit
from chatplane.common import errors
from chatplane.common.context import Principal
from chatplane.common.ids import new_id
from chatplane.common.settings import Settings
from chatplane.common.timestamps import timestamp_now
from chatplane.common.topics import (
    HANDOFF_SCHEMA_VERSION,
    HANDOFF_TOPIC,
    MESSAGE_SCHEMA_VERSION,
    MESSAGES_TOPIC,
)
from chatplane.common.trace_context import outgoing
from chatplane.crypto.keyring import Keyring
from chatplane.crypto.log_records import sealed_handoff_event, sealed_message
from chatplane.gateway.handoff_rules import EXPLICIT_REQUEST_RULE, THUMBS_DOWN_RULE, HandoffRules
from chatplane.internal.v1 import events_pb2, handoff_pb2, turn_pb2
from chatplane.log.base import LogRecord, MessageLogProducer
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import admin_resources_pb2, gateway_pb2, resources_pb2

_log = logging.getLogger(__name__)

# Seconds a downstream call may take: the caller's remaining time less a margin, capped.
Budget = Callable[[float], float]

MAX_REASON_BYTES = 1024
EXPLICIT_REQUEST_REASON = "the user asked for a person"


def owner_of(principal: Principal) -> admin_resources_pb2.Owner:
    """The principal as Persistence's owner."""
    return admin_resources_pb2.Owner(tenant_id=principal.tenant_id, user_id=principal.user_id)


def validate_reason(reason: str) -> None:
    """A handoff reason: at most 1 KiB of UTF-8, no NUL."""
    if len(reason.encode("utf-8")) > MAX_REASON_BYTES:
        raise errors.InvalidArgument("reason", f"must be at most {MAX_REASON_BYTES} bytes")
    if "\x00" in reason:
        raise errors.InvalidArgument("reason", "must not contain NUL characters")


class HandoffDesk:
    """Every handoff action of the Gateway, on behalf of users, rules and operators."""

    def __init__(
        self,
        *,
        settings: Settings,
        persistence: PersistenceClient,
        producer: MessageLogProducer,
        rules: HandoffRules,
        keyring: Keyring | None = None,
    ) -> None:
        self._settings = settings
        self._persistence = persistence
        self._producer = producer
        self._rules = rules
        # Encryption at rest (docs/security.md): text is sealed before the log.
        self._keyring = keyring

    def _call_timeout(self, budget: Budget) -> float:
        return budget(self._settings.internal_call_timeout_seconds)

    async def change(
        self,
        owner: admin_resources_pb2.Owner,
        conversation_id: str,
        *,
        mode: resources_pb2.HandoffMode.ValueType,
        trigger: resources_pb2.HandoffTrigger.ValueType,
        actor_id: str,
        budget: Budget,
        reason: str = "",
        rule: str = "",
    ) -> resources_pb2.HandoffStatus:
        """Change the conversation's mode; when that changed it, record the event."""
        response = await self._persistence.handoff.ChangeHandoff(
            handoff_pb2.ChangeHandoffRequest(
                owner=owner,
                conversation_id=conversation_id,
                mode=mode,
                trigger=trigger,
                reason=reason,
                actor_id=actor_id,
                rule=rule,
            ),
            timeout=self._call_timeout(budget),
        )
        status = response.handoff
        if status.changed:
            event = events_pb2.HandoffEvent(
                schema_version=HANDOFF_SCHEMA_VERSION,
                tenant_id=owner.tenant_id,
                user_id=owner.user_id,
                conversation_id=conversation_id,
            )
            if mode == resources_pb2.HANDOFF_MODE_HUMAN:
                event.requested.CopyFrom(status)
            else:
                event.released.CopyFrom(status)
            event = await sealed_handoff_event(self._keyring, event)
            await self._append([self._event_record(event)], budget)
            if rule:  # a rule fired; calls by users and operators are audited by their RPC
                audit.record(
                    audit.HANDOFF_REQUEST,
                    actor=f"user:{actor_id}",
                    tenant_id=owner.tenant_id,
                    object=f"conversation/{conversation_id}",
                    outcome=audit.SUCCESS,
                    detail=f"rule={rule}",
                )
            _log.info(
                "handoff changed",
                extra={"conversation": conversation_id, "mode": status.mode, "trigger": trigger},
            )
        return status

    async def state(
        self, owner: admin_resources_pb2.Owner, conversation_id: str, budget: Budget
    ) -> resources_pb2.HandoffStatus:
        """The conversation's current state (NOT_FOUND unless it is the owner's)."""
        response = await self._persistence.handoff.GetHandoff(
            handoff_pb2.GetHandoffRequest(owner=owner, conversation_id=conversation_id),
            timeout=self._call_timeout(budget),
        )
        return response.handoff

    async def before_turn(
        self,
        principal: Principal,
        request: gateway_pb2.ChatRequest,
        begin: turn_pb2.BeginTurnResponse,
        budget: Budget,
        current: resources_pb2.HandoffStatus | None = None,
    ) -> resources_pb2.HandoffStatus | None:
        """Called for a turn the caller owns, before the Agent: None lets the bot answer;
        otherwise the conversation is with a human (already, or because the explicit-request
        rule just fired), the user's message is recorded and the bot stays silent. `current`
        is the conversation's state when it was read already (gateway/turn_overlap.py)."""
        owner = owner_of(principal)
        status: resources_pb2.HandoffStatus | None = None
        if request.conversation_id:  # a new conversation is with the bot
            if current is None:
                current = await self.state(owner, begin.conversation_id, budget)
            if current.mode == resources_pb2.HANDOFF_MODE_HUMAN:
                status = current
        if status is None and self._rules.asks_for_human(request.text):
            fired = await self.change(
                owner,
                begin.conversation_id,
                mode=resources_pb2.HANDOFF_MODE_HUMAN,
                trigger=resources_pb2.HANDOFF_TRIGGER_EXPLICIT_REQUEST,
                actor_id=principal.user_id,
                budget=budget,
                reason=EXPLICIT_REQUEST_REASON,
                rule=EXPLICIT_REQUEST_RULE,
            )
            if fired.changed:
                status = fired
        if status is None:
            return None
        await self._record_user_message(owner, request, begin, budget)
        return status

    async def after_feedback(
        self, principal: Principal, message_id: str, budget: Budget
    ) -> resources_pb2.HandoffStatus | None:
        """Called after a thumbs-down is stored: the rule's handoff, if it fires now."""
        if self._rules.thumbs_down_threshold <= 0:
            return None
        owner = owner_of(principal)
        counted = await self._persistence.handoff.CountThumbsDown(
            handoff_pb2.CountThumbsDownRequest(owner=owner, message_id=message_id),
            timeout=self._call_timeout(budget),
        )
        if not self._rules.too_many_thumbs_down(counted.thumbs_down):
            return None
        status = await self.change(
            owner,
            counted.conversation_id,
            mode=resources_pb2.HANDOFF_MODE_HUMAN,
            trigger=resources_pb2.HANDOFF_TRIGGER_THUMBS_DOWN,
            actor_id=principal.user_id,
            budget=budget,
            reason=f"{counted.thumbs_down} thumbs-down ratings in the conversation",
            rule=THUMBS_DOWN_RULE,
        )
        return status if status.changed else None

    async def post_reply(
        self, operator: Principal, conversation_id: str, text: str, budget: Budget
    ) -> resources_pb2.Message:
        """Record an operator's reply in a conversation of the operator's tenant that is
        with a human: as a message of the conversation and as a handoff event."""
        handoff = await self.tenant_handoff(operator, conversation_id, budget)
        if handoff.handoff.mode != resources_pb2.HANDOFF_MODE_HUMAN:
            raise errors.FailedPrecondition(
                "the conversation is with the bot; it must be handed off before a reply"
            )
        message = resources_pb2.Message(
            message_id=new_id(),
            conversation_id=conversation_id,
            role=resources_pb2.ROLE_OPERATOR,
            text=text,
            status=resources_pb2.MESSAGE_STATUS_COMPLETE,
            create_time=timestamp_now(),
            operator_id=operator.user_id,
        )
        owner = handoff.owner
        sealed = await sealed_message(self._keyring, owner.tenant_id, owner.user_id, message)
        recorded = events_pb2.MessageRecorded(
            schema_version=MESSAGE_SCHEMA_VERSION,
            tenant_id=owner.tenant_id,
            user_id=owner.user_id,
            message=sealed,
        )
        event = events_pb2.HandoffEvent(
            schema_version=HANDOFF_SCHEMA_VERSION,
            tenant_id=owner.tenant_id,
            user_id=owner.user_id,
            conversation_id=conversation_id,
            operator_reply=sealed,
        )
        await self._append([self._message_record(recorded), self._event_record(event)], budget)
        return message

    async def tenant_handoff(
        self, operator: Principal, conversation_id: str, budget: Budget
    ) -> handoff_pb2.GetTenantHandoffResponse:
        """A conversation of the operator's tenant that was ever handed off, with its owner."""
        return await self._persistence.handoff.GetTenantHandoff(
            handoff_pb2.GetTenantHandoffRequest(
                tenant_id=operator.tenant_id, conversation_id=conversation_id
            ),
            timeout=self._call_timeout(budget),
        )

    async def _record_user_message(
        self,
        owner: admin_resources_pb2.Owner,
        request: gateway_pb2.ChatRequest,
        begin: turn_pb2.BeginTurnResponse,
        budget: Budget,
    ) -> None:
        """Store the user's message (the Agent, which stores it otherwise, is not called),
        then end the turn's lease: no answer will come, and a retry with the same key must
        not wait for one."""
        message = resources_pb2.Message(
            message_id=begin.user_message_id,
            conversation_id=begin.conversation_id,
            role=resources_pb2.ROLE_USER,
            text=request.text,
            status=resources_pb2.MESSAGE_STATUS_COMPLETE,
            create_time=timestamp_now(),
            client_message_id=request.client_message_id,
        )
        recorded = events_pb2.MessageRecorded(
            schema_version=MESSAGE_SCHEMA_VERSION,
            tenant_id=owner.tenant_id,
            user_id=owner.user_id,
            message=await sealed_message(self._keyring, owner.tenant_id, owner.user_id, message),
        )
        await self._append([self._message_record(recorded)], budget)
        await self._persistence.turns.ReleaseTurn(
            turn_pb2.ReleaseTurnRequest(owner=owner, user_message_id=begin.user_message_id),
            timeout=self._call_timeout(budget),
        )

    async def _append(self, records: list[LogRecord], budget: Budget) -> None:
        await self._producer.append(
            records, timeout=budget(self._settings.log_append_timeout_seconds)
        )

    @staticmethod
    def _headers() -> tuple[tuple[str, bytes], ...]:
        return tuple((name, value.encode()) for name, value in outgoing())

    def _message_record(self, recorded: events_pb2.MessageRecorded) -> LogRecord:
        return LogRecord(
            topic=MESSAGES_TOPIC,
            key=recorded.message.conversation_id.encode(),
            value=recorded.SerializeToString(),
            headers=self._headers(),
        )

    def _event_record(self, event: events_pb2.HandoffEvent) -> LogRecord:
        return LogRecord(
            topic=HANDOFF_TOPIC,
            key=event.conversation_id.encode(),
            value=event.SerializeToString(),
            headers=self._headers(),
        )
