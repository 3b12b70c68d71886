"""Micro-batches from a Faust stream, sized by the load instead of by a fixed clock.

Faust's `noack_take(n, within)` yields on a fixed tick (every `within` seconds, or when `n`
events are in), and it stops taking events in while the agent works on a batch, so a worker
waiting for the broker to acknowledge a batch's outputs takes nothing in meanwhile. Here:

- a batch closes when it holds `max_events`; or when no event has arrived for `idle_s` and the
  broker holds nothing newer for these partitions (`behind` is false: waiting longer would only
  add latency); or when its first event has waited `max_wait_s` (a steady trickle still gets
  answered), `behind_wait_s` while the broker holds more (a worker that is behind gets large
  batches, the cheapest per event, and is still answered). A worker that is behind sees gaps
  between fetches too, so the idle rule alone would cut its batches small just when it needs
  them large;
- events keep flowing into the next batch while the agent works on the current one, up to
  `max_events` of them (then the intake waits for the agent: back-pressure).

So an idle worker answers a lone event after `idle_s`; a busy one collects for up to `max_wait_s`,
and one that is behind for up to `behind_wait_s` (or until full), amortising the per-batch cost
of scoring and delivery. Nothing is acknowledged here
(the agent acknowledges after delivery, agents.py).

Uses the same two Stream hooks as Faust's own `noack_take` (faust/streams.py, 0.15.x):
`add_processor` (called for every event, with `current_event` set) and `_enable_passive`
(drains the stream in a background task so the processor runs).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

Behind = Callable[[Mapping[Any, int]], bool]  # {tp: newest offset taken in} -> more on the broker?


def behind_broker(consumer: Any) -> Behind:
    """True when a partition's high-water mark (as of the last fetch) is past what was taken in."""
    def behind(taken: Mapping[Any, int]) -> bool:
        for tp, offset in taken.items():
            hw = consumer.highwater(tp)
            if hw is not None and hw > offset + 1:
                return True
        return False
    return behind


async def batches(stream: Any, *, max_events: int, max_wait_s: float, idle_s: float,
                  behind: Behind | None = None, behind_wait_s: float | None = None,
                  clock: Callable[[], float] = time.monotonic) -> AsyncIterator[list[Any]]:
    """Yield lists of Faust events (not values) from `stream`, acks disabled. `behind_wait_s`
    (default `max_wait_s`): the longest wait while `behind` says the broker holds more."""
    if behind_wait_s is None:
        behind_wait_s = max_wait_s
    buf: list[Any] = []
    taken: dict[Any, int] = {}  # tp -> newest offset taken in
    first_at = last_at = 0.0
    nonempty = asyncio.Event()  # the buffer went from empty to holding an event
    full = asyncio.Event()  # the buffer holds max_events
    room = asyncio.Event()  # the agent took the buffer: the intake may go on
    room.set()

    async def take_in(value: Any) -> Any:
        nonlocal first_at, last_at
        while len(buf) >= max_events and not stream.should_stop:
            room.clear()
            await stream.wait(room)
        event = stream.current_event
        if event is None:
            raise RuntimeError("a stream processor ran without a current event")
        now = clock()
        if not buf:
            first_at = now
            nonempty.set()
        last_at = now
        msg = event.message
        taken[msg.tp] = msg.offset
        buf.append(event)
        if len(buf) >= max_events:
            full.set()
        return value

    acks_were = stream.enable_acks
    stream.enable_acks = False
    stream.add_processor(take_in)
    stream._enable_passive(aiter(stream.channel))
    try:
        while not stream.should_stop:
            if not buf:
                nonempty.clear()
                await stream.wait_for_stopped(nonempty)
                continue
            if len(buf) < max_events:
                if behind is not None and behind(taken):
                    due = first_at + behind_wait_s
                else:
                    due = min(first_at + max_wait_s, last_at + idle_s)
                wait = due - clock()
                if wait > 0:
                    full.clear()
                    await stream.wait_for_stopped(full, timeout=wait)
                    continue
            batch = buf[:]
            buf.clear()
            full.clear()
            room.set()
            yield batch
    finally:
        stream.enable_acks = acks_were
        stream._processors.remove(take_in)
