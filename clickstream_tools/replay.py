"""`stream-app replay PATH`: real logs into the input topic, in time order, keyed by user, at the
log's own pace, a multiple of it, or as fast as possible.

Inputs: the Taobao UserBehavior CSV (`user,item,category,behavior,unix seconds`, no header; read
with models.datasets.read_taobao) or JSON lines of schema-v1 events (each line validated exactly
as the worker validates it; rejected lines are counted and reported, not sent).

Order: events are sent in event-time order (a stable sort: ties keep file order), by one producer
with idempotence on, keyed by user id, so each user's events reach their partition in the order
the log has them, retries included.

Pace: event i is due at `start + (ts_i - ts_0) / speed` on the wall clock; its Kafka record
timestamp is that due time (the moment it happens in the replayed world), so the record
timestamps are the log's own times scaled by 1/speed and shifted to now. `speed=None` sends as
fast as the broker takes them (record timestamps are then the send times).

Side effects: reads the file, produces to Kafka, sleeps to keep pace.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kafka.errors import KafkaError

from stream_app.config import Settings
from stream_app.kafka_clients import BrokerUnavailable, Deliveries, close_producer, make_producer
from stream_app.records import InvalidEvent, parse_event

MAX_SLEEP_S = 0.5  # wake up at least this often while waiting for a due time (progress, Ctrl-C)


class ReplayError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class LogEvent:
    ts: float  # event time, unix seconds
    key: bytes  # user id
    value: bytes  # the schema-v1 JSON as sent


@dataclass
class LogFile:
    events: list[LogEvent]
    rejected: int = 0
    examples: list[str] = field(default_factory=list)  # a few "line N: reason" for the report


def read_log(path: Path, fmt: str = "auto") -> LogFile:
    """The file's valid events in event-time order. `fmt`: auto (by suffix) | taobao | jsonl."""
    if fmt == "auto":
        fmt = "taobao" if path.suffix.lower() == ".csv" else "jsonl"
    if fmt == "taobao":
        import orjson

        from models.datasets import read_taobao

        evs = [LogEvent(e["ts"], e["user_id"].encode(), orjson.dumps(e)) for e in read_taobao(path)]
        out = LogFile(evs)
    elif fmt == "jsonl":
        out = _read_jsonl(path)
    else:
        raise ValueError(f"unknown log format {fmt!r}: taobao | jsonl")
    out.events.sort(key=lambda e: e.ts)  # stable: a user's same-second events keep file order
    return out


def _read_jsonl(path: Path) -> LogFile:
    out = LogFile([])
    with open(path, "rb") as fh:
        for n, line in enumerate(fh, 1):
            raw = line.strip()
            if not raw:
                continue
            try:
                e = parse_event(raw)
            except InvalidEvent as err:
                out.rejected += 1
                if len(out.examples) < 5:
                    out.examples.append(f"line {n}: {err}")
                continue
            out.events.append(LogEvent(e.ts, e.user_id.encode(), raw))
    return out


def schedule(events: list[LogEvent], speed: float | None) -> Iterator[tuple[LogEvent, float | None]]:
    """(event, seconds after the start it is due), or None for as fast as possible."""
    if speed is not None and speed <= 0:
        raise ValueError("speed must be > 0 (or None: as fast as possible)")
    ts0 = events[0].ts if events else 0.0
    for e in events:
        yield e, None if speed is None else (e.ts - ts0) / speed


@dataclass(frozen=True)
class ReplayReport:
    sent: int
    rejected: int
    examples: list[str]
    log_seconds: float  # event-time span of the log
    wall_seconds: float


def replay(settings: Settings, log: LogFile, speed: float | None, topic: str | None = None,
           progress: Callable[[int, int], None] | None = None,
           clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
           connect_attempts: int = 3) -> ReplayReport:
    """Send `log` to the input topic (default: settings.topics.events). Stops with ReplayError as
    soon as a record is not acknowledged (the broker went away, or refuses us)."""
    topic = topic or settings.topics.events
    producer = make_producer(settings, "clickstream-replay", attempts=connect_attempts)
    deliveries = Deliveries(settings.bootstrap)
    start = clock()
    total = len(log.events)
    sent = 0
    try:
        for event, due in schedule(log.events, speed):
            timestamp_ms = None
            if due is not None:
                at = start + due
                while (wait := at - clock()) > 0:
                    deliveries.check()
                    sleep(min(wait, MAX_SLEEP_S))
                    if progress is not None:
                        progress(sent, total)
                timestamp_ms = int(round(at * 1000))
            deliveries.check()
            try:  # blocks at most max_block_ms when the broker is gone and the buffer is full
                future = producer.send(topic, key=event.key, value=event.value, timestamp_ms=timestamp_ms)
            except KafkaError as exc:
                raise ReplayError(f"the broker at {settings.bootstrap} does not take records: {exc!r}; "
                                  f"{sent} sent, {deliveries.acked} acknowledged") from exc
            deliveries.watch(future)
            sent += 1
            if progress is not None and (sent % 200 == 0 or due is not None):
                progress(sent, total)
        deliveries.drain(producer)
        if progress is not None:
            progress(sent, total)
    except BrokerUnavailable as exc:
        raise ReplayError(str(exc)) from exc
    finally:
        close_producer(producer, deliveries)
    span = log.events[-1].ts - log.events[0].ts if log.events else 0.0
    return ReplayReport(sent, log.rejected, log.examples, span, clock() - start)
