"""Contract tests of the A/B variant report (docs/variants.md) on every ConversationStore:
each assistant message's variant and latencies are stored with it, and `report_variants`
aggregates answers, feedback, scores, latencies and tokens per variant in SQL, filtered by
tenant and time, the same on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from chatplane.common.ids import new_id
from chatplane.persistence.store.answer_metrics import VariantStats
from chatplane.persistence.store.base import (
    ConversationStore,
    Feedback,
    Message,
    MessageStatus,
    Owner,
    Rating,
    Role,
)
from tests.contract.store_fixtures import (  # noqa: F401 (fixtures are found by name)
    FakeClock,
    MessageFactory,
    StoreTarget,
    clock_fixture,
    make_message_fixture,
    module_database_fixture,
    postgres_dsn_fixture,
    store_fixture,
    store_target_fixture,
)

ALICE = Owner("tenant-a", "alice")
BOB = Owner("tenant-a", "bob")
CAROL = Owner("tenant-b", "carol")


async def _answer(
    store: ConversationStore,
    make_message: MessageFactory,
    owner: Owner,
    variant: str,
    *,
    first_token_ms: int | None,
    duration_ms: int | None,
    input_tokens: int = 0,
    output_tokens: int = 0,
    status: MessageStatus = MessageStatus.COMPLETE,
    days_ago: int = 0,
) -> Message:
    """Stores a question and its answer in a new conversation; returns the answer."""
    conversation_id = new_id()
    question = make_message(owner, conversation_id)
    answer = make_message(
        owner,
        conversation_id,
        role=Role.ASSISTANT,
        status=status,
        variant=variant,
        first_token_ms=first_token_ms,
        duration_ms=duration_ms,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        reply_to_message_id=question.message_id,
        create_time=question.create_time - timedelta(days=days_ago) + timedelta(microseconds=1),
    )
    question = make_message(
        owner,
        conversation_id,
        message_id=question.message_id,
        create_time=answer.create_time - timedelta(microseconds=1),
    )
    assert await store.write_messages([question, answer]) == 2
    return answer


async def test_each_answer_records_its_variant_and_latencies(
    store: ConversationStore, store_target: StoreTarget, make_message: MessageFactory
) -> None:
    measured = await _answer(
        store, make_message, ALICE, "concise@3", first_token_ms=120, duration_ms=900
    )
    unmeasured = await _answer(store, make_message, ALICE, "", first_token_ms=None, duration_ms=40)
    # Delivered again by the log: still one row.
    assert await store.write_messages([measured]) == 0
    rows = store_target.rows(
        "SELECT message_id, tenant_id, variant, first_token_ms, duration_ms FROM answer_metrics"
        " ORDER BY variant"
    )
    assert rows == [
        (measured.message_id, "tenant-a", "concise@3", 120, 900),
        (unmeasured.message_id, "tenant-a", "default", None, 40),
    ]
    # User messages get no row; deleting the conversation takes the row with it.
    assert len(store_target.rows("SELECT * FROM answer_metrics")) == 2
    await store.delete_conversation(ALICE, measured.conversation_id)
    assert [r[0] for r in store_target.rows("SELECT variant FROM answer_metrics")] == ["default"]


async def test_feedback_keeps_its_optional_score(
    store: ConversationStore, store_target: StoreTarget, make_message: MessageFactory
) -> None:
    answer = await _answer(store, make_message, ALICE, "a", first_token_ms=1, duration_ms=2)
    await store.submit_feedback(ALICE, Feedback(answer.message_id, Rating.THUMBS_UP, "", 4))
    assert store_target.rows("SELECT rating, score FROM feedback") == [("thumbs_up", 4)]
    # A later feedback replaces the earlier one, score included.
    await store.submit_feedback(ALICE, Feedback(answer.message_id, Rating.THUMBS_DOWN, "meh"))
    assert store_target.rows("SELECT rating, score FROM feedback") == [("thumbs_down", None)]


async def test_report_aggregates_per_variant(
    store: ConversationStore, make_message: MessageFactory, clock: FakeClock
) -> None:
    a1 = await _answer(
        store,
        make_message,
        ALICE,
        "a",
        first_token_ms=100,
        duration_ms=1000,
        input_tokens=10,
        output_tokens=5,
    )
    a2 = await _answer(
        store,
        make_message,
        BOB,
        "a",
        first_token_ms=200,
        duration_ms=2000,
        input_tokens=20,
        output_tokens=6,
    )
    a3 = await _answer(
        store,
        make_message,
        ALICE,
        "a",
        first_token_ms=300,
        duration_ms=3000,
        input_tokens=30,
        output_tokens=7,
        days_ago=10,
    )
    # Interrupted: counted as an answer, left out of the means.
    await _answer(
        store,
        make_message,
        ALICE,
        "a",
        first_token_ms=5,
        duration_ms=6,
        input_tokens=999,
        output_tokens=1,
        status=MessageStatus.INTERRUPTED,
    )
    b1 = await _answer(
        store,
        make_message,
        BOB,
        "b",
        first_token_ms=None,
        duration_ms=500,
        input_tokens=8,
        output_tokens=40,
    )
    await _answer(
        store,
        make_message,
        BOB,
        "b",
        first_token_ms=50,
        duration_ms=700,
        input_tokens=12,
        output_tokens=60,
    )
    c1 = await _answer(
        store,
        make_message,
        CAROL,
        "a",
        first_token_ms=1000,
        duration_ms=9000,
        input_tokens=1,
        output_tokens=1,
    )
    await store.submit_feedback(ALICE, Feedback(a1.message_id, Rating.THUMBS_UP, "", 5))
    await store.submit_feedback(BOB, Feedback(a2.message_id, Rating.THUMBS_DOWN, "", 2))
    await store.submit_feedback(ALICE, Feedback(a3.message_id, Rating.THUMBS_UP))
    await store.submit_feedback(BOB, Feedback(b1.message_id, Rating.THUMBS_DOWN, "", 1))
    await store.submit_feedback(CAROL, Feedback(c1.message_id, Rating.THUMBS_UP, "", 4))

    tenant_a = await store.analytics.report_variants("tenant-a")
    assert tenant_a == [
        VariantStats(
            variant="a",
            answers=4,
            interrupted_answers=1,
            feedback_count=3,
            scored_count=2,
            mean_score=pytest.approx(3.5),
            thumbs_up_count=2,
            mean_first_token_ms=pytest.approx(200.0),
            mean_duration_ms=pytest.approx(2000.0),
            mean_input_tokens=pytest.approx(20.0),
            mean_output_tokens=pytest.approx(6.0),
            score_sum=5 + 2,
            score_square_sum=25 + 4,
        ),
        VariantStats(
            variant="b",
            answers=2,
            interrupted_answers=0,
            feedback_count=1,
            scored_count=1,
            mean_score=pytest.approx(1.0),
            thumbs_up_count=0,
            mean_first_token_ms=pytest.approx(50.0),
            mean_duration_ms=pytest.approx(600.0),
            mean_input_tokens=pytest.approx(10.0),
            mean_output_tokens=pytest.approx(50.0),
            score_sum=1,
            score_square_sum=1,
        ),
    ]
    assert tenant_a[0].thumbs_up_rate == pytest.approx(2 / 3)
    assert tenant_a[1].thumbs_up_rate == 0.0

    everyone = {s.variant: s for s in await store.analytics.report_variants()}
    assert set(everyone) == {"a", "b"}
    assert everyone["a"].answers == 5
    assert everyone["a"].feedback_count == 4
    assert everyone["a"].mean_score == pytest.approx((5 + 2 + 4) / 3)

    # Since a day ago: the answer of ten days ago is left out.
    since = clock.now - timedelta(days=1)
    recent = {s.variant: s for s in await store.analytics.report_variants(since=since)}
    assert recent["a"].answers == 4
    assert recent["a"].feedback_count == 3
    assert recent["a"].mean_first_token_ms == pytest.approx((100 + 200 + 1000) / 3)


async def test_report_of_nothing_is_empty_and_means_are_absent(
    store: ConversationStore, make_message: MessageFactory
) -> None:
    assert await store.analytics.report_variants() == []
    assert await store.analytics.report_variants("nobody") == []
    # Only an interrupted answer without feedback: counts, but nothing to average.
    await _answer(
        store,
        make_message,
        ALICE,
        "a",
        first_token_ms=None,
        duration_ms=None,
        status=MessageStatus.INTERRUPTED,
    )
    [stats] = await store.analytics.report_variants()
    assert (stats.answers, stats.interrupted_answers, stats.feedback_count) == (1, 1, 0)
    assert stats.mean_score is None
    assert stats.thumbs_up_rate is None
    assert stats.mean_first_token_ms is None
    assert stats.mean_input_tokens is None
