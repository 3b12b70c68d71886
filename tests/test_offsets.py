"""The commit position: Faust's own bookkeeping commits over unacked offsets; ours does not."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP
from intervaltree import IntervalTree

from stream_app.offsets import LedgerConsumer, OffsetHole, OffsetLedger

TP0 = TP("events", 0)


def _fake_consumer(committed: int | None, acked: list[int], gaps: list[tuple[int, int]] = (),
                   ledger: OffsetLedger | None = None) -> SimpleNamespace:
    tree = IntervalTree()
    for a, b in gaps:
        tree.addi(a, b)
    return SimpleNamespace(
        _acked=defaultdict(list, {TP0: sorted(acked)}),
        _acked_index=defaultdict(set, {TP0: set(acked)}),
        _gap=defaultdict(IntervalTree, {TP0: tree}),
        _committed_offset=defaultdict(lambda: None, {TP0: committed}),
        app=SimpleNamespace(ledger=ledger),
    )


def test_faust_commits_over_a_single_unacked_offset_upstream_bug():
    """Minimal reproduction of the upstream off-by-one (faust-streaming 0.15.3,
    Consumer._new_offset): the committed position 10 is the next offset to read, offset 10 was
    never acked, yet the commit moves to 14. If this starts failing, upstream fixed it."""
    fake = _fake_consumer(committed=10, acked=[11, 12, 13])
    assert FaustConsumer._new_offset(fake, TP0) == 14


def test_ledger_consumer_never_commits_past_an_event_not_done():
    ledger = OffsetLedger()
    gen = ledger.arrive(TP0, 10, start=10)
    for o in (11, 12, 13):
        ledger.arrive(TP0, o, start=10)
    fake = _fake_consumer(committed=10, acked=[11, 12, 13], ledger=ledger)
    assert LedgerConsumer._new_offset(fake, TP0) is None  # nothing done yet
    assert fake._acked[TP0] == [] and not fake._acked_index[TP0]  # Faust's list does not grow
    ledger.done(TP0, 10, gen)
    assert LedgerConsumer._new_offset(fake, TP0) == 11
    ledger.done(TP0, 13, gen)
    assert LedgerConsumer._new_offset(fake, TP0) == 14


def test_arrival_detects_a_hole_and_skip_moves_past_a_verified_one():
    ledger = OffsetLedger()
    ledger.arrive(TP0, 5, start=5)
    with pytest.raises(OffsetHole) as e:
        ledger.arrive(TP0, 8, start=5)
    assert (e.value.expected, e.value.got) == (6, 8)
    ledger.skip(TP0, 8)  # the broker holds no record at 6 and 7 (transaction markers)
    ledger.arrive(TP0, 8, start=5)


def test_a_hole_at_the_assigned_position_is_caught():
    """The restart race (faust-streaming#596) drops the first events after the seek: the first
    event the agent sees is past the committed position."""
    ledger = OffsetLedger()
    with pytest.raises(OffsetHole):
        ledger.arrive(TP0, 103, start=100)


def test_a_rebalance_makes_late_completions_of_the_old_assignment_harmless():
    ledger = OffsetLedger()
    gen = ledger.arrive(TP0, 0, start=None)
    ledger.reset()  # revoked (and maybe assigned again) while the batch was in flight
    ledger.done(TP0, 0, gen)
    assert ledger.committable(TP0) is None
    gen2 = ledger.arrive(TP0, 0, start=None)
    ledger.done(TP0, 0, gen2)
    assert ledger.committable(TP0) == 1


def test_the_worker_consumer_bounds_the_fetch_long_poll():
    """Faust fixes fetch_max_wait_ms at 1500; a worker that fell behind stayed ~1.5 s behind
    (offsets.ShortPollConsumerThread). Ours passes the app's setting to aiokafka."""
    import asyncio

    from stream_app.app import ClickstreamApp
    from stream_app.offsets import ShortPollConsumerThread

    async def build() -> int:
        app = ClickstreamApp("t-fetch-wait", broker="kafka://127.0.0.1:1", web_enabled=False)
        app.fetch_max_wait_ms = 37
        thread = app.consumer._thread
        assert isinstance(thread, ShortPollConsumerThread)
        consumer = thread._create_worker_consumer(app.transport)
        try:
            return consumer._fetch_max_wait_ms
        finally:
            consumer._closed = True  # never started: nothing to close

    assert asyncio.run(build()) == 37
