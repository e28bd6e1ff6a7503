"""The tamper-evident audit log (docs/security.md, "Audit log").

Code that does something auditable calls `audit.record(...)`: the event is queued on this
process's recorder (installed at start by the service, `install`) and appended in batches to
the hash chain in the system of record. It never blocks the caller and never carries message
content. Changes that the system of record makes itself (API keys) are audited inside their
own transaction instead, so the change and its record commit together.

    from chatplane import audit
    audit.record(audit.USER_ERASE, actor=audit.actor_of(principal), tenant_id=tenant,
                 object=f"user/{tenant}/{user}", outcome=audit.SUCCESS)
"""

from __future__ import annotations

import logging
from typing import Final

from chatplane.audit.chain import (
    EMPTY_HEAD,
    GENESIS_HASH,
    AuditEvent,
    AuditHead,
    AuditRecord,
    ChainVerifier,
    Verdict,
    verify,
)
from chatplane.audit.recorder import AuditRecorder, AuditSink
from chatplane.common.context import Principal, request_id_var

__all__ = [
    "API_KEY_CREATE",
    "API_KEY_REVOKE",
    "API_KEY_ROTATE",
    "AUTHZ_DENIED",
    "AUTH_FAILURE",
    "DENIED",
    "EMPTY_HEAD",
    "FAILURE",
    "GENESIS_HASH",
    "HANDOFF",
    "HANDOFF_RELEASE",
    "HANDOFF_REPLY",
    "HANDOFF_REQUEST",
    "OPERATOR_READ",
    "SUCCESS",
    "USER_ERASE",
    "USER_EXPORT",
    "AuditEvent",
    "AuditHead",
    "AuditRecord",
    "AuditRecorder",
    "AuditSink",
    "ChainVerifier",
    "Verdict",
    "actor_of",
    "install",
    "installed",
    "record",
    "verify",
]

_log = logging.getLogger(__name__)

# Actions ("<domain>.<verb>"). Handoffs use HANDOFF + "." + their step (e.g. "handoff.reply").
AUTH_FAILURE: Final = "auth.failure"
AUTHZ_DENIED: Final = "authz.denied"
API_KEY_CREATE: Final = "api_key.create"
API_KEY_ROTATE: Final = "api_key.rotate"
API_KEY_REVOKE: Final = "api_key.revoke"
USER_ERASE: Final = "user.erase"
USER_EXPORT: Final = "user.export"
HANDOFF: Final = "handoff"
OPERATOR_READ: Final = "conversation.operator_read"
# Handoff steps (docs/handoff.md): a user's (or a rule's) request, a release by the user or an
# operator, an operator's reply. Export and erasure: USER_EXPORT, USER_ERASE above.
HANDOFF_REQUEST: Final = "handoff.request"
HANDOFF_RELEASE: Final = "handoff.release"
HANDOFF_REPLY: Final = "handoff.reply"

# Outcomes.
SUCCESS: Final = "success"
FAILURE: Final = "failure"
DENIED: Final = "denied"

# Process-wide like the tracer provider: one recorder per process, set by its entry point.
_recorder: AuditRecorder | None = None


def install(recorder: AuditRecorder | None) -> None:
    """Makes `recorder` the one `record` queues on (None: uninstall)."""
    global _recorder  # noqa: PLW0603 (one recorder per process, set once at start)
    _recorder = recorder


def installed() -> AuditRecorder | None:
    """The installed recorder, if any."""
    return _recorder


def actor_of(principal: Principal) -> str:
    """The actor name of an authenticated principal."""
    return f"user:{principal.user_id}"


def record(
    action: str,
    *,
    actor: str,
    tenant_id: str,
    object: str,
    outcome: str,
    detail: str = "",
    source: str = "",
    request_id: str | None = None,
) -> None:
    """Queues one audit event on this process's recorder (the request id defaults to the
    current call's). Returns at once; see AuditRecorder for what happens under a flood."""
    event = AuditEvent(
        actor=actor,
        tenant_id=tenant_id,
        action=action,
        object=object,
        outcome=outcome,
        detail=detail,
        source=source,
        request_id=request_id_var.get() if request_id is None else request_id,
    )
    recorder = _recorder
    if recorder is None:
        _log.warning("audit event without a recorder", extra={"action": action})
        return
    recorder.record(event)
