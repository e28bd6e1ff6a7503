"""Indexes later what could not be remembered at once: the Agent logs a turn whose Remember
failed (memory or its index was down) to MEMORY_REMEMBER_TOPIC; this loop feeds those turns to
ConversationalMemory, retrying while the index is unavailable and committing only afterwards."""

from __future__ import annotations

import asyncio
import logging

from google.protobuf.message import DecodeError

from chatplane.common import errors
from chatplane.crypto.keyring import Keyring
from chatplane.crypto.log_records import opened_remember
from chatplane.internal.v1 import memory_pb2
from chatplane.log import ConsumedRecord, MessageLogConsumer
from chatplane.memory.conversational_memory import ConversationalMemory
from chatplane.memory.remember_request import remembered_messages

_log = logging.getLogger(__name__)

CONSUMER_GROUP = "chatplane-memory"
_MAX_BACKOFF_SECONDS = 5.0


class RememberRetryConsumer:
    """The consumer loop; `start()` runs it as a task, `stop()` ends it."""

    def __init__(
        self,
        consumer: MessageLogConsumer,
        memory: ConversationalMemory,
        *,
        max_records: int = 100,
        max_wait: float = 0.5,
        keyring: Keyring | None = None,
    ) -> None:
        self._consumer = consumer
        # The Agent seals the records' text (docs/security.md): opened before indexing.
        self._keyring = keyring
        self._memory = memory
        self._max_records = max_records
        self._max_wait = max_wait
        self._task: asyncio.Task[None] | None = None
        self.remembered = 0

    def start(self) -> None:
        """Runs the loop in the background."""
        self._task = asyncio.create_task(self._run(), name="remember-retry")

    async def stop(self) -> None:
        """Ends the loop; what was not committed is consumed again after a restart."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                batch = await self._consumer.poll_batch(self._max_records, self._max_wait)
            except errors.Unavailable:
                _log.warning("message log unavailable; retrying")
                await asyncio.sleep(1.0)
                continue
            if not batch:
                continue
            backoff = 0.2
            for record in batch:
                while not await self._remember(record):
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)
            await self._consumer.commit(batch)

    async def _remember(self, record: ConsumedRecord) -> bool:
        """True when the record is indexed (or can never be); False to retry later."""
        try:
            request = memory_pb2.RememberRequest.FromString(record.value)
            request = await opened_remember(self._keyring, request)
            messages = remembered_messages(request)
            self.remembered += await self._memory.remember(
                request.tenant_id, request.user_id, request.conversation_id, messages
            )
        except (DecodeError, KeyError, errors.InvalidArgument):
            _log.error("dropping an invalid remember record", extra={"offset": record.offset})
            return True
        except errors.Unavailable:
            return False
        except Exception:
            # An engine error we do not know: keep the record and try again later, rather
            # than lose the turn from memory; the log line says what is wrong.
            _log.exception("indexing a remembered turn failed; will retry")
            return False
        return True
