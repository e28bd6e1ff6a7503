"""W3C trace context propagation."""

from __future__ import annotations

import re

from chatplane.common.context import request_id_var
from chatplane.common.trace_context import new_traceparent, propagated

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_valid_traceparent_and_its_tracestate_pass_through_with_the_request_id() -> None:
    request_id_var.set("req-7")
    context = dict(propagated([("traceparent", VALID), ("tracestate", "k=v"), ("other", "x")]))
    assert context == {"traceparent": VALID, "tracestate": "k=v", "x-request-id": "req-7"}


def test_a_missing_or_invalid_traceparent_starts_a_new_trace() -> None:
    for metadata in (
        [],
        [("traceparent", "garbage")],
        [("traceparent", "00-" + "0" * 32 + "-00f067aa0ba902b7-01")],
    ):
        context = dict(propagated([*metadata, ("tracestate", "k=v")]))
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", context["traceparent"])
        assert context["traceparent"] != VALID
        assert "tracestate" not in context  # it belonged to the discarded trace


def test_new_traceparents_differ() -> None:
    assert new_traceparent() != new_traceparent()
