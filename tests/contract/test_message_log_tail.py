"""Contract of MessageLog.tail (the handoff fan-out, docs/handoff.md) on every log
implementation: a tail starts at the end and each tail gets every later record."""

from __future__ import annotations

from tests.contract.test_message_log import (  # noqa: F401 (fixtures)
    LogUnderTest,
    consume,
    group,
    kafka_bootstrap,
    message_log,
    records_of,
    topic,
)

APPEND_TIMEOUT = 5.0


async def test_tails_start_at_the_end_and_each_gets_every_later_record(
    message_log: LogUnderTest,  # noqa: F811
    topic: str,  # noqa: F811
) -> None:
    producer = message_log.producer()
    await producer.append(records_of(topic, b"old", 3), APPEND_TIMEOUT)
    tails = [message_log.log.tail([topic]) for _ in range(2)]
    message_log.opened.extend(tails)
    for tail in tails:
        # The first poll fixes where the tail starts: after the three old records.
        assert await tail.poll_batch(10, 0.2) == []
    sent = records_of(topic, b"a", 2) + records_of(topic, b"b", 2)
    await producer.append(sent, APPEND_TIMEOUT)
    for tail in tails:
        got = await consume(tail, 4, deadline=10.0)
        assert sorted(r.value for r in got) == sorted(r.value for r in sent)
        await tail.commit(got)  # nothing to commit: no group
        assert await tail.lag() == 0
        assert await tail.poll_batch(10, 0.2) == []
