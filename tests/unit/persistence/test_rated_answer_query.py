"""PersistenceService.ListRatedAnswers' argument checks (docs/datasets.md): each bad field is
INVALID_ARGUMENT naming it; a page token round-trips into the keyset cursor."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from chatplane.common import errors
from chatplane.common.ids import new_id
from chatplane.persistence.dataset_servicer import rated_answer_query
from chatplane.persistence.paging import encode_token
from chatplane.v1 import persistence_pb2

SINCE = datetime(2026, 11, 1, tzinfo=UTC)


def _request(**fields: object) -> persistence_pb2.ListRatedAnswersRequest:
    request = persistence_pb2.ListRatedAnswersRequest(**{"min_rating": 3, **fields})  # type: ignore[arg-type]
    if "since" not in fields:
        request.since.FromDatetime(SINCE)
    return request


def _until(moment: datetime) -> persistence_pb2.ListRatedAnswersRequest:
    request = _request()
    request.until.FromDatetime(moment)
    return request


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (persistence_pb2.ListRatedAnswersRequest(min_rating=3), "since"),
        (_until(SINCE), "until"),
        (_request(min_rating=0), "min_rating"),
        (_request(min_rating=6), "min_rating"),
        (_request(page_size=501), "page_size"),
        (_request(page_token="not-a-token"), "page_token"),
        (_request(page_token=encode_token({"k": "c", "t": 1, "id": "x"})), "page_token"),
    ],
)
def test_bad_fields_are_named(
    request_: persistence_pb2.ListRatedAnswersRequest, field: str
) -> None:
    with pytest.raises(errors.InvalidArgument) as raised:
        rated_answer_query(request_, ("t",))
    assert raised.value.field == field


def test_a_page_token_becomes_the_cursor() -> None:
    message_id = new_id()
    token = encode_token({"k": "r", "t": 1_700_000_000_000_000, "id": message_id})
    query = rated_answer_query(_request(page_token=token, page_size=0), ("t",))
    assert query.after == (datetime.fromtimestamp(1_700_000_000, UTC), message_id)
    assert (query.limit, query.min_rating, query.since, query.until) == (100, 3, SINCE, None)
