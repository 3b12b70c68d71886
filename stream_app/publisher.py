"""Hand a micro-batch's predictions straight to the producer.

Faust's `topic.send_soon` costs a FutureMessage, a buffer hop and a task per message; at two
predictions per event that overhead shows. This publisher calls the aiokafka producer directly
(one cheap append per message into the partition's open record batch).

It uses the aiokafka producer that Faust itself owns, on purpose: Faust's `Producer.flush()`,
which runs before every offset commit, flushes that producer, so a committed offset still implies
delivered predictions (at-least-once). Partitions come from Kafka's default partitioner on the
key (`agents.default_partition`), so each user's predictions stay in order in one partition.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)


class BatchPublisher:
    def __init__(self, faust_producer: Any, partitions: int,
                 partition_of: Callable[[bytes, int], int]) -> None:
        self._faust_producer = faust_producer
        self.partitions = partitions
        self.partition_of = partition_of

    async def publish(self, topic: str, messages: Iterable[tuple[bytes, bytes]]) -> int:
        """Queue (key, value) messages on `topic`; returns how many. Does not wait for delivery.

        `producer.send` only appends to the partition's open record batch (no network round trip
        per message); consecutive micro-batches share record batches, so the number of produce
        requests does not grow with the number of micro-batches."""
        producer = self._faust_producer._ensure_producer()  # the aiokafka producer Faust flushes
        n = 0
        for key, value in messages:
            fut = await producer.send(topic, value=value, key=key,
                                      partition=self.partition_of(key, self.partitions))
            fut.add_done_callback(_exit_on_failure)
            n += 1
        return n


def _exit_on_failure(fut: asyncio.Future) -> None:
    """aiokafka gave up on a batch after its own retries: an infrastructure failure. Exit before
    Faust can commit past it, so the events are redelivered (and re-predicted) after a restart."""
    if not fut.cancelled() and fut.exception() is not None:
        log.critical("prediction batch delivery failed: %r; exiting", fut.exception())
        os._exit(75)
