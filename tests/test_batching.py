"""batching.batches against a stand-in for a Faust stream: what closes a batch, back-pressure,
order. Gaps in the scripts are far apart from the limits (tenths of a second against zero), so a
slow machine does not change the batches."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import Any

from stream_app.batching import batches


class Ev:
    def __init__(self, n: int) -> None:
        self.n = n
        self.message = type("Msg", (), {"tp": ("events", n % 2), "offset": n})()


class FakeStream:
    """The Stream surface batches() uses: processors run by a passive drainer, current_event,
    wait/wait_for_stopped, enable_acks."""

    def __init__(self, script: list[tuple[float, int]]) -> None:
        self.script = script  # (pause before the event, event)
        self.enable_acks = True
        self._processors: list[Any] = []
        self.current_event: Any = None
        self.should_stop = False
        self.channel = self  # aiter(stream.channel) must work; the drainer ignores it
        self.taken_in: list[int] = []  # events whose processor call returned
        self.seen_after_hold: list[int] = []  # len(taken_in) at the end of each agent hold

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> int:
        raise StopAsyncIteration

    def add_processor(self, fn: Any) -> None:
        self._processors.append(fn)

    def _enable_passive(self, channel: Any) -> None:
        asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        for pause, event in self.script:
            await asyncio.sleep(pause)
            self.current_event = Ev(event)
            for fn in list(self._processors):
                await fn(event)
            self.taken_in.append(event)

    async def wait(self, event: asyncio.Event) -> None:
        await event.wait()

    async def wait_for_stopped(self, event: asyncio.Event, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        return self.should_stop


def collect(script: list[tuple[float, int]], hold_s: float = 0.0,
            **kw: Any) -> tuple[list[list[int]], FakeStream]:
    async def run() -> tuple[list[list[int]], FakeStream]:
        stream = FakeStream(script)
        got: list[list[int]] = []
        n = len(script)
        async with aclosing(batches(stream, **kw)) as it:
            async for batch in it:
                got.append([e.n for e in batch])
                if hold_s:  # the agent works on the batch while events keep arriving
                    await asyncio.sleep(hold_s)
                    stream.seen_after_hold.append(len(stream.taken_in))
                if sum(map(len, got)) == n:
                    stream.should_stop = True
                    break
        assert stream.enable_acks is True and stream._processors == []  # restored when done
        return got, stream

    return asyncio.run(run())


def test_a_burst_is_cut_at_max_events_and_nothing_is_lost_or_reordered():
    got, _ = collect([(0.0, i) for i in range(10)], max_events=4, max_wait_s=5.0, idle_s=0.3)
    assert got == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_a_lone_event_goes_after_the_idle_gap_not_after_the_longest_wait():
    # max_wait 30 s: if the idle gap did not close the batch, this test would take 30 s per batch
    got, _ = collect([(0.0, 0), (0.0, 1), (1.0, 2)], max_events=100, max_wait_s=30.0, idle_s=0.2)
    assert got == [[0, 1], [2]]


def test_a_steady_trickle_is_cut_by_the_longest_wait():
    # an event every 0.05 s never leaves an idle gap of 0.5 s; the first event's wait closes it
    script = [(0.05, i) for i in range(40)]  # about 2 s in all
    got, _ = collect(script, max_events=1000, max_wait_s=0.3, idle_s=0.5)
    assert len(got) > 1 and [e for b in got for e in b] == list(range(40))


def test_events_keep_arriving_while_the_agent_works_and_the_intake_waits_when_full():
    # the agent holds each batch 0.5 s; meanwhile the next events are taken in, up to max_events
    got, stream = collect([(0.0, i) for i in range(9)], hold_s=0.5, max_events=3, max_wait_s=5.0,
                          idle_s=0.1)
    assert got == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    # while batch 1 was held, 3, 4, 5 came in and 6 waited: never more than max_events buffered
    assert stream.seen_after_hold[:2] == [6, 9]


def test_a_worker_that_is_behind_does_not_cut_batches_at_fetch_gaps():
    # a 0.4 s pause between two events: a gap between fetches when the broker holds more
    script = [(0.0, 0), (0.4, 1)]
    calm, _ = collect(script, max_events=100, max_wait_s=2.0, idle_s=0.1)
    seen: list[dict] = []

    def behind(taken):
        seen.append(dict(taken))
        return True

    busy, _ = collect(script, max_events=100, max_wait_s=2.0, idle_s=0.1, behind=behind)
    assert calm == [[0], [1]] and busy == [[0, 1]]
    assert seen and seen[-1] == {("events", 0): 0, ("events", 1): 1}  # newest offset per partition


def test_a_worker_that_is_behind_waits_longer_for_full_batches():
    # a steady trickle (an event every 0.05 s): cut by the 0.2 s wait when caught up, but while
    # the broker holds more the batches wait for max_events (behind_wait 30 s never expires here)
    script = [(0.05, i) for i in range(20)]
    calm, _ = collect(script, max_events=10, max_wait_s=0.2, idle_s=0.5, behind=lambda taken: False,
                      behind_wait_s=30.0)
    busy, _ = collect(script, max_events=10, max_wait_s=0.2, idle_s=0.5, behind=lambda taken: True,
                      behind_wait_s=30.0)
    assert busy == [list(range(10)), list(range(10, 20))]
    assert len(calm) > 2 and [e for b in calm for e in b] == list(range(20))
