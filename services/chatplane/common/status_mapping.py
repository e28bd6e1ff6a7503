"""The one boundary between domain errors and gRPC: domain exceptions become a status code
with `google.rpc` details, and errors of downstream calls become domain exceptions."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Final

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from chatplane.common import errors
from chatplane.common.timestamps import duration_of_seconds, seconds_of

_log = logging.getLogger(__name__)

_CODES: Final[dict[type[errors.ChatplaneError], grpc.StatusCode]] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}

# Downstream codes that keep their meaning when passed on to our caller.
_PASSED_ON: Final[dict[grpc.StatusCode, type[errors.ChatplaneError]]] = {
    code: error
    for error, code in _CODES.items()
    if error not in (errors.InvalidArgument, errors.ResourceExhausted)
}


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_status(error: errors.ChatplaneError | None, request_id: str) -> grpc.Status:
    """The status (code, message, details) for a domain error; None means a bug → INTERNAL."""
    details: list[any_pb2.Any] = [_pack(error_details_pb2.RequestInfo(request_id=request_id))]
    if error is None:
        code, message = grpc.StatusCode.INTERNAL, "internal error"
    else:
        kind = next(k for k in type(error).__mro__ if k in _CODES)
        code, message = _CODES[kind], error.message
    if isinstance(error, errors.InvalidArgument):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=error.field, description=error.description
        )
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    if isinstance(error, errors.ResourceExhausted):
        delay = duration_of_seconds(error.retry_after)
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    if isinstance(error, errors.QuotaExceeded):
        violation = error_details_pb2.QuotaFailure.Violation(
            subject=error.subject, description=error.description
        )
        details.append(_pack(error_details_pb2.QuotaFailure(violations=[violation])))
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=details)
    return rpc_status.to_status(status)


def _status_details(error: grpc.aio.AioRpcError) -> list[any_pb2.Any]:
    """The google.rpc details a downstream service attached to its error (none if absent
    or undecodable)."""
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        try:
            return list(status_pb2.Status.FromString(value).details)
        except DecodeError:
            return []
    return []


def field_violations(
    error: grpc.aio.AioRpcError,
) -> list[error_details_pb2.BadRequest.FieldViolation]:
    """The BadRequest field violations a downstream service attached to its error."""
    violations: list[error_details_pb2.BadRequest.FieldViolation] = []
    for detail in _status_details(error):
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            violations.extend(bad_request.field_violations)
    return violations


def _retry_delay(error: grpc.aio.AioRpcError, default: float) -> float:
    """The RetryInfo delay a downstream service attached to its error, else `default`."""
    for detail in _status_details(error):
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return seconds_of(info.retry_delay)
    return default


def from_rpc_error(error: grpc.aio.AioRpcError, call: str) -> errors.ChatplaneError:
    """A domain error for a failed downstream call.

    Codes with a meaning for our caller (NOT_FOUND, UNAVAILABLE, …) pass on with their
    message; anything else (a bug or a bad request of ours downstream) is logged and becomes
    UNAVAILABLE, since the caller's request was fine and a retry may succeed.
    """
    code = error.code()
    kind = _PASSED_ON.get(code)
    if kind is not None:
        return kind(error.details() or code.name.lower())
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return errors.ResourceExhausted(
            error.details() or "resource exhausted", retry_after=_retry_delay(error, 1.0)
        )
    _log.error("downstream call failed", extra={"call": call, "code": code.name})
    return errors.Unavailable(f"{call} failed")


def forwarded_invalid_argument(
    error: grpc.aio.AioRpcError, prefix: str
) -> errors.InvalidArgument | None:
    """When a downstream service refused, as INVALID_ARGUMENT, a field our caller sent us
    verbatim (embedded at `prefix` in the downstream request, e.g. `page.` for the page of a
    ListConversations), the same violation about the caller's own field; else None (the bad
    request was ours: `from_rpc_error` makes it UNAVAILABLE)."""
    if error.code() is not grpc.StatusCode.INVALID_ARGUMENT:
        return None
    for violation in field_violations(error):
        if violation.field.startswith(prefix):
            return errors.InvalidArgument(
                violation.field.removeprefix(prefix), violation.description
            )
    return None


@contextlib.contextmanager
def caller_field_errors(prefix: str) -> Iterator[None]:
    """Around a downstream call that carries the caller's own fields at `prefix`: its
    INVALID_ARGUMENT about one of them is raised as that violation of the caller's field
    (forwarded_invalid_argument); any other error propagates unchanged."""
    try:
        yield
    except grpc.aio.AioRpcError as error:
        forwarded = forwarded_invalid_argument(error, prefix)
        if forwarded is None:
            raise
        raise forwarded from error
