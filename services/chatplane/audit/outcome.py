"""One audit record per audited call, whatever its outcome: `audited(...)` wraps the call and
records `success` when it returns, `denied` for PERMISSION_DENIED, and `failure` (with the
error's kind, never its payload) for any other error, a cancellation included.

    with audited(audit.OPERATOR_READ, actor=..., tenant_id=..., object=...) as note:
        ...
        note.detail = "messages=12"
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from chatplane import audit
from chatplane.common import errors


@dataclass(slots=True)
class AuditNote:
    """What the wrapped call may still say about itself: the object it acted on (once it
    knows it better) and a short machine-made detail (counts, never content)."""

    object: str
    detail: str = ""


def failure_reason(error: BaseException) -> str:
    """A short reason for a failed call: the error's kind and our own (content-free)
    message; a downstream status by its code only."""
    if isinstance(error, errors.ChatplaneError):
        return f"{type(error).__name__}: {error.message}"
    if isinstance(error, grpc.aio.AioRpcError):
        return f"downstream {error.code().name}"
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return "cancelled by the caller"
    return type(error).__name__


@contextlib.contextmanager
def audited(
    action: str, *, actor: str, tenant_id: str, object: str, source: str = ""
) -> Iterator[AuditNote]:
    """Records exactly one `action` event when the block ends (see the module docstring)."""
    note = AuditNote(object)
    outcome, reason = audit.SUCCESS, ""
    try:
        yield note
    except errors.PermissionDenied as denied:
        outcome, reason = audit.DENIED, denied.message
        raise
    except BaseException as error:
        outcome, reason = audit.FAILURE, failure_reason(error)
        raise
    finally:
        detail = "; ".join(part for part in (note.detail, reason) if part)
        audit.record(
            action,
            actor=actor,
            tenant_id=tenant_id,
            object=note.object,
            outcome=outcome,
            detail=detail,
            source=source,
        )
