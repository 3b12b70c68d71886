"""Hand a micro-batch's predictions to Kafka as per-partition record batches.

Faust's `topic.send_soon` costs a future, a buffer hop and an await per message; at three sends
per event that, not the GRU, caps the worker. This publisher appends records straight into
aiokafka record batches (one per topic partition) and submits each batch once.

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
        """Queue (key, value) messages on `topic`; returns how many. Does not wait for delivery."""
        producer = self._faust_producer._ensure_producer()  # the aiokafka producer Faust flushes
        builders: dict[int, Any] = {}
        pending = []
        n = 0
        for key, value in messages:
            part = self.partition_of(key, self.partitions)
            b = builders.get(part)
            if b is None:
                b = builders[part] = producer.create_batch()
            if b.append(key=key, value=value, timestamp=None) is None:  # full: ship it, start anew
                pending.append(await producer.send_batch(b, topic, partition=part))
                b = builders[part] = producer.create_batch()
                b.append(key=key, value=value, timestamp=None)
            n += 1
        for part, b in builders.items():
            pending.append(await producer.send_batch(b, topic, partition=part))
        for fut in pending:
            fut.add_done_callback(_exit_on_failure)
        return n


def _exit_on_failure(fut: asyncio.Future) -> None:
    """aiokafka gave up on a batch after its own retries: an infrastructure failure. Exit before
    Faust can commit past it, so the events are redelivered (and re-predicted) after a restart."""
    if not fut.cancelled() and fut.exception() is not None:
        log.critical("prediction batch delivery failed: %r; exiting", fut.exception())
        os._exit(75)
