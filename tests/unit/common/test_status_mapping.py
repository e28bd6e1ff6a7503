"""Domain errors ⇄ gRPC status with google.rpc details."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2

from chatplane.common import errors, status_mapping


def details(status: grpc.Status) -> status_pb2.Status:
    raw = dict(status.trailing_metadata)["grpc-status-details-bin"]
    assert isinstance(raw, bytes)
    return status_pb2.Status.FromString(raw)


def test_invalid_argument_carries_the_field_and_request_id() -> None:
    status = status_mapping.to_status(errors.InvalidArgument("text", "empty"), "req-1")
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT
    decoded = details(status)
    bad = error_details_pb2.BadRequest()
    info = error_details_pb2.RequestInfo()
    assert decoded.details[0].Unpack(info) and info.request_id == "req-1"
    assert decoded.details[1].Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == [("text", "empty")]


def test_resource_exhausted_carries_the_retry_delay() -> None:
    status = status_mapping.to_status(errors.ResourceExhausted("slow down", 2.5), "r")
    assert status.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    retry = error_details_pb2.RetryInfo()
    assert details(status).details[1].Unpack(retry)
    assert retry.retry_delay.ToMilliseconds() == 2500


def test_a_bug_is_internal_without_its_message() -> None:
    status = status_mapping.to_status(None, "r")
    assert status.code is grpc.StatusCode.INTERNAL
    assert status.details == "internal error"


def test_every_domain_error_has_a_code() -> None:
    for kind in (
        errors.Unauthenticated,
        errors.PermissionDenied,
        errors.NotFound,
        errors.AlreadyExists,
        errors.FailedPrecondition,
        errors.Unavailable,
        errors.DeadlineExceeded,
    ):
        assert (
            status_mapping.to_status(kind("x"), "r").code.name
            == {
                "Unauthenticated": "UNAUTHENTICATED",
                "PermissionDenied": "PERMISSION_DENIED",
                "NotFound": "NOT_FOUND",
                "AlreadyExists": "ALREADY_EXISTS",
                "FailedPrecondition": "FAILED_PRECONDITION",
                "Unavailable": "UNAVAILABLE",
                "DeadlineExceeded": "DEADLINE_EXCEEDED",
            }[kind.__name__]
        )
