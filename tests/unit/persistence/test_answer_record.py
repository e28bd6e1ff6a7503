"""The A/B fields of log records in their stored form (docs/variants.md), the feedback score's
validation (Gateway and Persistence), and the report RPC's request checks."""

from __future__ import annotations

import psycopg
import pytest

from chatplane.common import errors
from chatplane.common.feedback_score import feedback_score
from chatplane.common.ids import new_id
from chatplane.common.topics import MESSAGES_TOPIC
from chatplane.gateway.validation import validate_feedback
from chatplane.internal.v1 import analytics_pb2, conversation_pb2
from chatplane.log import ConsumedRecord
from chatplane.persistence.analytics_servicer import report_variants
from chatplane.persistence.consumer import decode_message
from chatplane.persistence.conversation_servicer import ConversationServicer
from chatplane.persistence.store.base import Owner
from chatplane.persistence.store.migrations import shipped_migrations
from chatplane.persistence.store.postgres import PostgresConversationStore
from chatplane.v1 import admin_resources_pb2, gateway_pb2, resources_pb2
from tests.contract.store_fixtures import recorded

OWNER = Owner("t", "u")


def consumed(record: object) -> ConsumedRecord:
    return ConsumedRecord(
        topic=MESSAGES_TOPIC,
        partition=0,
        offset=0,
        key=b"k",
        value=record.SerializeToString(),  # type: ignore[attr-defined]
        headers=(),
        timestamp_ms=0,
    )


def test_an_assistant_record_keeps_its_variant_and_latencies() -> None:
    record = recorded(OWNER, role=resources_pb2.ROLE_ASSISTANT)
    record.variant = "concise@2"
    record.first_token_ms = 0
    record.duration_ms = 1500
    message = decode_message(consumed(record))
    assert (message.variant, message.first_token_ms, message.duration_ms) == ("concise@2", 0, 1500)


def test_an_assistant_record_of_an_older_agent_is_the_default_variant() -> None:
    message = decode_message(consumed(recorded(OWNER, role=resources_pb2.ROLE_ASSISTANT)))
    assert (message.variant, message.first_token_ms, message.duration_ms) == ("default", None, None)


def test_broken_latencies_are_unmeasured_and_user_messages_have_no_variant() -> None:
    record = recorded(OWNER, role=resources_pb2.ROLE_ASSISTANT)
    record.first_token_ms = -5
    record.duration_ms = -1
    message = decode_message(consumed(record))
    assert (message.first_token_ms, message.duration_ms) == (None, None)
    user = recorded(OWNER)
    user.variant = "a"
    assert decode_message(consumed(user)).variant == ""


@pytest.mark.parametrize("score", [0, 6, -1, 100])
def test_a_score_outside_1_to_5_is_invalid_argument_on_its_field(score: int) -> None:
    request = gateway_pb2.SubmitFeedbackRequest(
        message_id=new_id(), rating=gateway_pb2.RATING_THUMBS_UP, score=score
    )
    with pytest.raises(errors.InvalidArgument) as raised:
        validate_feedback(request, 4096)
    assert raised.value.field == "score"
    with pytest.raises(errors.InvalidArgument) as raised:
        feedback_score(request, "feedback.score")
    assert raised.value.field == "feedback.score"


@pytest.mark.parametrize("score", [1, 3, 5])
def test_scores_1_to_5_and_no_score_are_accepted(score: int) -> None:
    request = gateway_pb2.SubmitFeedbackRequest(
        message_id=new_id(), rating=gateway_pb2.RATING_THUMBS_DOWN, score=score
    )
    validate_feedback(request, 4096)
    assert feedback_score(request) == score
    request.ClearField("score")
    validate_feedback(request, 4096)
    assert feedback_score(request) is None


async def test_persistence_refuses_a_bad_score_before_storing(
    store: PostgresConversationStore,
) -> None:
    servicer = ConversationServicer(store)
    request = conversation_pb2.SubmitFeedbackRequest(
        owner=admin_resources_pb2.Owner(tenant_id="t", user_id="u"),
        feedback=gateway_pb2.SubmitFeedbackRequest(
            message_id=new_id(), rating=gateway_pb2.RATING_THUMBS_UP, score=0
        ),
    )
    with pytest.raises(errors.InvalidArgument) as raised:
        await servicer.SubmitFeedback(request, None)  # type: ignore[arg-type]
    assert raised.value.field == "feedback.score"


async def test_report_request_checks(store: PostgresConversationStore) -> None:
    with pytest.raises(errors.InvalidArgument) as raised:
        await report_variants(store, analytics_pb2.ReportVariantsRequest(tenant_id="t" * 300))
    assert raised.value.field == "tenant_id"
    request = analytics_pb2.ReportVariantsRequest()
    request.since.seconds = 2**62
    with pytest.raises(errors.InvalidArgument) as raised:
        await report_variants(store, request)
    assert raised.value.field == "since"
    assert not (await report_variants(store, analytics_pb2.ReportVariantsRequest())).variants
    # Issue 8: the comparison's level.
    for alpha in (0.0, 0.5, -1.0):
        with pytest.raises(errors.InvalidArgument) as raised:
            await report_variants(store, analytics_pb2.ReportVariantsRequest(alpha=alpha))
        assert raised.value.field == "alpha"


async def test_migration_files_answers_stored_before_it_under_default(
    postgres_database: str,
) -> None:
    with psycopg.connect(postgres_database, autocommit=True) as connection:
        connection.execute(
            "CREATE TABLE schema_version (version integer PRIMARY KEY, name text NOT NULL,"
            " apply_time timestamptz NOT NULL DEFAULT now())"
        )
        for migration in shipped_migrations()[:2]:  # the schema before variants
            connection.execute(migration.script.encode())
            connection.execute(
                "INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
        connection.execute(
            "INSERT INTO conversations VALUES ('c', 't', 'u', 'title', now(), now(), 2)"
        )
        for message_id, role in (("q", "user"), ("a", "assistant")):
            connection.execute(
                "INSERT INTO messages (message_id, conversation_id, tenant_id, user_id, role,"
                " text, status, model, create_time, reply_to_message_id, finish_reason,"
                " input_tokens, output_tokens, client_message_id, store_time)"
                " VALUES (%s, 'c', 't', 'u', %s, 'x', 'complete', 'm', now(), '', 'stop', 3, 4,"
                " '', now())",
                (message_id, role),
            )
    store = await PostgresConversationStore.open(postgres_database, pool_max_size=2)
    try:
        [stats] = await store.analytics.report_variants()
    finally:
        await store.close()
    assert (stats.variant, stats.answers, stats.mean_output_tokens) == ("default", 1, 4.0)
    assert stats.mean_first_token_ms is None
