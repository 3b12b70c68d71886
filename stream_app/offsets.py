"""Which input offsets may be committed: only those whose every output the broker has acknowledged.

Faust commits what streams have acked, and its bookkeeping has holes (../shared/notes/
faust-internals.md): `_new_offset` commits over a single never-acked offset (committed 10, acked
11..13 -> 14), a gap it records on fetch includes the message that revealed it, and events dropped
between fetch and agent during recovery (faust-streaming#596) are never acked yet can be passed.
So the commit position is ours, kept in an `OffsetLedger`:

- `arrive(tp, offset)` is called for each event as the agent receives it. Offsets of one partition
  must follow each other; a jump is a *hole*: either offsets that hold no record (transaction
  markers, compaction: legitimate) or events Faust dropped (not). The agent tells them apart with
  the broker (see agents.py) before it goes on.
- `done(tp, offset)` is called once every output derived from the event (predictions, dead
  letter, state changelog) is acknowledged by the broker.
- The consumer's `_new_offset` returns one past the last done offset of a gap-free run: the
  commit can never pass an event whose outputs are not on the broker.

A rebalance starts each partition afresh (a new `generation`): late `done` calls for a partition
that was revoked meanwhile are ignored, so a stale batch cannot move a new assignment's position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP


class OffsetHole(RuntimeError):
    def __init__(self, tp: TP, expected: int, got: int) -> None:
        super().__init__(f"{tp.topic}[{tp.partition}]: expected offset {expected}, got {got}")
        self.tp, self.expected, self.got = tp, expected, got


@dataclass
class _Track:
    generation: int
    expected: int | None  # next offset the agent should see; None = not known yet
    commit: int | None = None  # next offset to commit: one past the last done event


class OffsetLedger:
    def __init__(self) -> None:
        self._tracks: dict[TP, _Track] = {}
        self.generation = 0

    def reset(self) -> None:
        """Forget every partition: called on every rebalance."""
        self.generation += 1
        self._tracks.clear()

    def arrive(self, tp: TP, offset: int, start: int | None) -> int:
        """Record an event's arrival; returns the generation to pass to `done`. `start` is the
        committed position the partition was assigned at (None = unknown: trust the first event).
        Raises OffsetHole when offsets are skipped (call `skip` once the hole is explained)."""
        t = self._tracks.get(tp)
        if t is None:
            t = self._tracks[tp] = _Track(self.generation, start)
        if t.expected is not None and offset > t.expected:
            raise OffsetHole(tp, t.expected, offset)
        # (an offset below `expected` is a second copy of an event: the state knows it applied it)
        t.expected = max(offset + 1, t.expected or 0)
        return t.generation

    def skip(self, tp: TP, upto: int) -> None:
        """Offsets before `upto` hold no record (checked with the broker): move past them."""
        self._tracks[tp].expected = upto

    def done(self, tp: TP, offset: int, generation: int) -> None:
        """Called in offset order, batch after batch, with contiguity checked at arrival: so every
        earlier offset of this assignment is done too."""
        t = self._tracks.get(tp)
        if t is None or t.generation != generation:
            return  # revoked since: the new owner reprocesses from the committed position
        if t.commit is None or offset + 1 > t.commit:
            t.commit = offset + 1

    def committable(self, tp: TP) -> int | None:
        t = self._tracks.get(tp)
        return None if t is None else t.commit


class ShortPollConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread with a bounded fetch long-poll.

    Faust creates its aiokafka consumer with `fetch_max_wait_ms=1500`, fixed. aiokafka keeps one
    fetch in flight per broker, and a fetch built while the busy partitions still have records
    buffered asks only for the quiet ones (our own changelog, say): the broker holds it the
    full 1.5 s, and nothing else is fetched from that broker meanwhile. Once a worker falls
    behind (a CPU hiccup is enough) it stays ~1.5 s behind with a core to spare
    (benchmarks/feeder.py probe: 1,460 events/s, a 3 s CPU hog; lag ~2,000 events for the rest of
    the run at 1,500 ms, back to ~50 within 3 s at 100 ms)."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        wait = getattr(self.app, "fetch_max_wait_ms", None)
        if wait is not None:
            consumer._fetch_max_wait_ms = int(wait)  # read by its Fetcher at start()
        return consumer


class LedgerConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, committing the ledger's position instead of its own."""

    def _new_consumer_thread(self) -> ShortPollConsumerThread:
        return ShortPollConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _new_offset(self, tp: TP) -> int | None:
        # Faust's own ack list only feeds its unacked-message bookkeeping here; drop it
        self._acked[tp].clear()
        self._acked_index[tp].clear()
        ledger: OffsetLedger | None = getattr(self.app, "ledger", None)
        if ledger is None:
            return None
        nxt = ledger.committable(tp)
        committed = self._committed_offset[tp]
        if nxt is None or (committed is not None and nxt <= committed):
            return None
        return nxt


class LedgerTransport(faust_aiokafka.Transport):
    Consumer = LedgerConsumer


def committed_position(app: Any, tp: TP) -> int | None:
    """The position a partition was assigned at (Faust stores 0 as None: both mean "unknown")."""
    return app.consumer._committed_offset.get(tp)
