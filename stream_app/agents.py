"""The hot path: one agent, micro-batched; the only place that reads/writes the state table and
sends.

One event's path: `clickstream.events` (key = user_id, any partitioner) -> `EventPipeline.process`
(parse, dead letters, state read from the event's own partition, `score_batch`) -> `BatchOutput`
(messages + new state rows, nothing sent yet) -> `Delivery.run`:

  1. predictions (both topics, in the input event's partition number) and dead letters are sent
     and every delivery is awaited (predictions as one producer batch per topic and partition,
     batch_send.py);
  2. only then the new state rows go to the changelog (batched the same way), and are awaited;
  3. only then they are written to the local RocksDB copy;
  4. only then the events are acknowledged, in offset order, and the offset ledger may commit them.

A crash at any point leaves the state at or behind what was published: a redelivered event was
either never applied (it is scored again, with the same prediction) or is recognised by its
offset as already applied and its predictions are on the broker (a duplicate flagged `replayed`).
Faust's own commit bookkeeping is replaced by the ledger (offsets.py), so no input offset is
committed before every output derived from it is acknowledged.

Error policy: bad data never crashes the worker (dead letters with a reason). An exception while
scoring is classified by type: data-like errors (ValueError, KeyError, ...) retry the batch event
by event with a fresh outbox per attempt, and the events that still fail are dead-lettered
(`processing_error`); anything else (CUDA, disk, a newer state format, a failed delivery), or
`breaker_failures` data-like failures in a row, is an infrastructure fault: the worker stops at
once without acknowledging anything, and the events are redelivered after the restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from faust.types import TP

from models.features import WindowLimits

from .batch_send import send_batched
from .instruments import Metrics
from .offsets import OffsetHole, OffsetLedger, committed_position
from .online_eval import Kept, evaluate, evaluate_expired
from .predictor import Predictor
from .records import (
    KEY_MISMATCH,
    PROCESSING_ERROR,
    Event,
    InvalidEvent,
    check_not_future,
    churn_payload,
    dead_letter_headers,
    next_action_payload,
    parse_event,
)
from .scoring import BatchResult, score_batch
from .state import UserState, decode, encode, last_seen_of

log = logging.getLogger(__name__)

# Errors that a single odd event can cause in our own code; anything else is the machine's fault.
DATA_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, IndexError, TypeError,
                                                 ArithmeticError, UnicodeError)
EXIT_INFRA = 70  # EX_SOFTWARE: a supervisor restarts the worker; nothing was acknowledged
MAX_DEAD_LETTER_BYTES = 64 * 1024  # a dead letter the broker refuses whole goes truncated to this

Row = tuple[int, str]  # (partition, user id): a state row


class InfraError(RuntimeError):
    """Not the data's fault: never acknowledge, stop the worker."""


@dataclass
class OutMessage:
    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None


@dataclass
class BatchOutput:
    """Everything one batch produces, built before anything is sent (an outbox per batch)."""
    messages: list[OutMessage] = field(default_factory=list)
    rows: dict[Row, bytes] = field(default_factory=dict)  # new state rows


class EventPipeline:
    """Parse, read state, score: (messages) -> BatchOutput. Reads the table; sends nothing."""

    def __init__(self, *, metrics: Metrics, predictor: Predictor, table: Any, limits: WindowLimits,
                 dead_letters: str, next_action: str, churn: str, valid_events: str | None = None,
                 max_future_s: float = 600.0, breaker_failures: int = 20,
                 clock: Callable[[], float] = time.time,
                 pseudonymise: Callable[[Event], Event] | None = None) -> None:
        self.pseudonymise = pseudonymise  # pseudonymisation.py: ids hashed before any use
        self.metrics = metrics
        self.predictor = predictor
        self.table = table  # StateTable (tables.py) or a test double with the same methods
        self.limits = limits
        self.dead_letters = dead_letters
        self.next_action = next_action
        self.churn = churn
        self.valid_events = valid_events
        self.max_future_s = max_future_s
        self.breaker_failures = breaker_failures
        self.clock = clock
        self.failures_in_row = 0
        self.event_clock: dict[int, float] = {}  # partition -> newest accepted event time
        self.offsets: dict[int, int] = {}  # partition -> last offset handled (consumer lag)
        m = metrics
        self._m_accepted = m.events_consumed.labels("accepted")
        self._m_rejected = m.events_consumed.labels("rejected")
        self._m_replayed = m.events_consumed.labels("replayed")
        self._stage = {s: m.stage_seconds.labels(s) for s in ("parse", "state_read", "scoring",
                                                              "encode")}

    # --- entry point ------------------------------------------------------------------------
    def process(self, msgs: Sequence[Any]) -> BatchOutput:
        """`msgs`: Kafka messages (key, value, topic, partition, offset, headers) in arrival order."""
        t0 = time.perf_counter()
        out = BatchOutput()
        now = self.clock()
        accepted: list[tuple[Any, Event]] = []
        for msg in msgs:
            self.offsets[msg.partition] = msg.offset
            try:
                if msg.key is None:
                    raise InvalidEvent(KEY_MISMATCH, "message has no key; the key must be the user_id")
                e = parse_event(msg.value, msg.key)
                e = self.pseudonymise(e) if self.pseudonymise else e
                check_not_future(e, now, self.max_future_s)
            except InvalidEvent as err:
                self._dead_letter(out, msg, err)
                continue
            accepted.append((msg, e))
        self._stage["parse"].inc(time.perf_counter() - t0)
        if accepted:
            self._score(accepted, out)
        self.metrics.batch_size.observe(len(msgs))
        self.metrics.batch_seconds.observe(time.perf_counter() - t0)
        return out

    # --- scoring ----------------------------------------------------------------------------
    def _score(self, accepted: list[tuple[Any, Event]], out: BatchOutput) -> None:
        t = time.perf_counter()
        states = self._read_states(accepted)
        self._stage["state_read"].inc(time.perf_counter() - t)
        try:
            result = self._attempt(accepted, states)
        except DATA_ERRORS:
            log.exception("scoring a batch of %d events failed; retrying one by one", len(accepted))
        else:
            self.failures_in_row = 0
            self._emit(accepted, result, out)
            return
        for one in accepted:  # each attempt has its own result: nothing is emitted twice
            try:
                r = self._attempt([one], states)
            except DATA_ERRORS as exc:
                self.failures_in_row += 1
                if self.failures_in_row >= self.breaker_failures:
                    raise InfraError(f"{self.failures_in_row} events in a row failed to score: the "
                                     "fault is not in the data") from exc
                self._dead_letter(out, one[0], InvalidEvent(PROCESSING_ERROR, repr(exc)[:500]))
                continue
            self.failures_in_row = 0
            states.update(r.states)
            self._emit([one], r, out)

    def _attempt(self, accepted: list[tuple[Any, Event]],
                 states: dict[Hashable, UserState | None]) -> BatchResult:
        t = time.perf_counter()
        result = score_batch(self.predictor, [e for _, e in accepted], states, self.limits,
                             row_keys=[(m.partition, e.user_id) for m, e in accepted],
                             offsets=[m.offset for m, _ in accepted])
        dt = time.perf_counter() - t
        self.metrics.step_seconds.observe(dt)
        self._stage["scoring"].inc(dt)
        return result

    def _read_states(self, accepted: list[tuple[Any, Event]]) -> dict[Hashable, UserState | None]:
        states: dict[Hashable, UserState | None] = {}
        for msg, e in accepted:
            row = (msg.partition, e.user_id)
            if row not in states:
                states[row] = self._read_state(row)
        return states

    def _read_state(self, row: Row) -> UserState | None:
        partition, user = row
        key = user.encode()
        raw = self.table.get(partition, key)
        if raw is None:
            if self.table.other_partitions_with(partition, key):
                self.metrics.split_users.inc()  # this user's events arrive on two partitions
            return None
        try:
            return decode(raw)
        except DATA_ERRORS:  # a corrupt row must not stop the user's stream
            log.exception("unreadable state for a user; starting them afresh")
            self.metrics.state_errors.inc()
            return None
        # NewerStateFormat (a RuntimeError) propagates: an infrastructure fault, never overwritten

    def _emit(self, accepted: list[tuple[Any, Event]], result: BatchResult, out: BatchOutput) -> None:
        t = time.perf_counter()
        now = self.clock()
        version = self.predictor.version
        horizon = self.predictor.model.cfg.churn_horizon_s
        msgs = out.messages
        for (msg, e), (probs, churn, items, item_probs, replayed) in zip(
                accepted, result.predictions.rows(), strict=True):
            key = e.user_id.encode()  # = msg.key, or its pseudonym
            part = msg.partition
            msgs.append(OutMessage(self.next_action, part, key, next_action_payload(
                e, version, probs, items, item_probs, now, replayed)))
            msgs.append(OutMessage(self.churn, part, key, churn_payload(
                e, version, churn, horizon, now, replayed)))
            if self.valid_events is not None:
                msgs.append(OutMessage(self.valid_events, part, key, e.to_json()))
            if e.ts > self.event_clock.get(part, 0.0):
                self.event_clock[part] = e.ts
        for row, st in result.states.items():
            out.rows[row] = encode(st)  # type: ignore[index]  # rows are (partition, user) here
        n = len(accepted)
        self._m_accepted.inc(n - result.stats["replayed"])
        self._m_replayed.inc(result.stats["replayed"])
        self.metrics.late_events.inc(result.stats["late"])
        self.metrics.rebuilt_states.inc(result.stats["rebuilt"])
        if result.online is not None:  # applied events only: a replay is never scored twice
            self.metrics.add_online(evaluate(result.online, horizon))
        self._stage["encode"].inc(time.perf_counter() - t)

    def _dead_letter(self, out: BatchOutput, msg: Any, err: InvalidEvent) -> None:
        headers = dead_letter_headers(err, msg.topic, msg.partition, msg.offset,
                                      _header_list(msg.headers))
        out.messages.append(OutMessage(self.dead_letters, msg.partition, msg.key, msg.value, headers))
        self._m_rejected.inc()
        self.metrics.events_rejected.labels(err.reason).inc()
        log.debug("dead-lettered %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, err)


def _header_list(headers: Any) -> list[tuple[str, bytes]]:
    if not headers:
        return []
    items = headers.items() if isinstance(headers, dict) else headers
    return [(k, v) for k, v in items]


# --- delivery: sends, awaits, local state, acks -----------------------------------------------

def _stop(exc: BaseException) -> None:
    log.critical("infrastructure fault; stopping without acknowledging the batch (its events "
                 "are redelivered after the restart): %r", exc, exc_info=exc)
    logging.shutdown()
    os._exit(EXIT_INFRA)


class PendingRows:
    """State rows of batches whose delivery has not finished, in front of the table.

    A batch is scored while the previous one's changelog is still on its way to the broker, so
    reads must see that batch's rows before they reach the local store. Holds at most
    `max_in_flight` batches of rows; `row in pending` tells the idle sweep to leave a row alone."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self.rows: dict[tuple[int, bytes], tuple[int, bytes | None]] = {}  # -> (batch seq, value)

    def get(self, partition: int, key: bytes) -> bytes | None:
        hit = self.rows.get((partition, key))
        return hit[1] if hit is not None else self.table.get(partition, key)

    def other_partitions_with(self, partition: int, key: bytes) -> list[int]:
        return self.table.other_partitions_with(partition, key)

    def hold(self, seq: int, rows: dict[int, dict[bytes, bytes | None]]) -> None:
        for p, kv in rows.items():
            for k, v in kv.items():
                self.rows[(p, k)] = (seq, v)

    def release(self, seq: int, rows: dict[int, dict[bytes, bytes | None]]) -> None:
        """Forget a stored batch's rows, except those a later batch has replaced meanwhile."""
        for p, kv in rows.items():
            for k in kv:
                hit = self.rows.get((p, k))
                if hit is not None and hit[0] == seq:
                    del self.rows[(p, k)]

    def __contains__(self, row: object) -> bool:
        if not isinstance(row, tuple):
            return False
        p, user = row
        return (p, user.encode() if isinstance(user, str) else user) in self.rows

    def __len__(self) -> int:
        return len(self.rows)


class Delivery:
    """Runs one batch through the pipeline and makes its effects durable in the safe order."""

    def __init__(self, *, app: Any, pipeline: EventPipeline, ledger: OffsetLedger,
                 metrics: Metrics, bootstrap: str, client_kwargs: dict[str, Any] | None = None,
                 max_in_flight: int = 2, producer: Callable[[], Any] | None = None) -> None:
        if not isinstance(pipeline.table, PendingRows):
            raise TypeError("the pipeline must read state through PendingRows (rows in delivery)")
        self.app = app
        # the aiokafka producer under Faust's: outputs and state rows go to it as producer batches
        # (batch_send.py); dead letters go one by one through Faust's, with their fallback
        self.producer = producer or (lambda: app.producer._ensure_producer())
        self.pipeline = pipeline
        # rows computed but not yet stored: the pipeline reads through them, the sweep skips them
        self.in_flight: PendingRows = pipeline.table
        self.table = self.in_flight.table
        self.ledger = ledger
        self.metrics = metrics
        self.bootstrap = bootstrap
        self.client_kwargs = client_kwargs or {}  # security settings for our own consumer
        self.max_in_flight = max_in_flight
        self._tails: deque[asyncio.Task[None]] = deque()  # batches whose delivery is finishing
        self._seq = 0
        self._stage = {s: metrics.stage_seconds.labels(s) for s in ("publish", "changelog", "ack")}

    def reset(self) -> None:
        """A rebalance: positions start again from the committed offsets."""
        self.ledger.reset()

    async def run(self, stream: Any, events: Sequence[Any]) -> None:
        try:
            admitted = await self._admit(stream, events)
            if admitted:
                await self._start(stream, admitted)
        except Exception as exc:  # noqa: BLE001 - an infrastructure fault: stop, unacknowledged
            _stop(exc)

    async def drain(self) -> None:
        """Wait until every batch handed over so far is delivered and acknowledged."""
        while self._tails:
            await self._tails.popleft()

    async def _admit(self, stream: Any, events: Sequence[Any]) -> list[Admitted]:
        """Check each event's offset follows its partition's previous one; returns (message,
        ledger generation, Faust event or None) for everything to process, in offset order per
        partition, including events re-read from the broker to fill a hole."""
        admitted: list[Admitted] = []
        for ev in events:
            msg = ev.message
            tp = msg.tp
            try:
                admitted.append((msg, self.ledger.arrive(tp, msg.offset, committed_position(self.app, tp)),
                                 ev))
            except OffsetHole as hole:
                admitted += await self._fill(hole)
                admitted.append((msg, self.ledger.arrive(tp, msg.offset, None), ev))
        return admitted

    async def _fill(self, hole: OffsetHole) -> list[Admitted]:
        """A jump in offsets: legitimate where the broker holds no record (transaction markers,
        compaction). Records it does hold never reached the agent (Faust's recovery race,
        faust-streaming#596: events fetched before the post-rebalance seek are cleared from the
        agent's queue and their re-fetched copies dropped). They are read here, straight from the
        broker, and processed before the event that revealed the hole. (Seeking Faust's consumer
        back runs into the same race: its buffered messages move the read offset past the seek.)"""
        tp = hole.tp
        log.warning("offset jump in %s[%d]: expected %d, got %d; asking the broker what lies between",
                    tp.topic, tp.partition, hole.expected, hole.got)
        records = await asyncio.wait_for(
            read_records(self.bootstrap, tp, hole.expected, hole.got, self.client_kwargs), timeout=60)
        filled: list[Admitted] = []
        for r in records:
            self.ledger.skip(tp, r.offset)  # past any offsets without a record before it
            filled.append((r, self.ledger.arrive(tp, r.offset, None), None))
        self.ledger.skip(tp, hole.got)
        if filled:
            self.metrics.offset_holes.inc(len(filled))
            log.warning("%d records of %s[%d] between offsets %d and %d never reached the agent; "
                        "read them from the broker", len(filled), tp.topic, tp.partition,
                        hole.expected, hole.got - 1)
        return filled

    async def _start(self, stream: Any, admitted: list[Admitted]) -> None:
        """Score the batch and hand its outputs to the producer; the rest of its delivery runs in
        the background, so the agent takes the next batch in while the broker acknowledges this
        one. At most `max_in_flight` batches are being delivered at a time."""
        while len(self._tails) >= self.max_in_flight:
            await self._tails.popleft()
        out = self.pipeline.process([msg for msg, _, _ in admitted])
        self._seq += 1
        rows: dict[int, dict[bytes, bytes | None]] = {}
        for (p, u), v in out.rows.items():
            rows.setdefault(p, {})[u.encode()] = v
        self.in_flight.hold(self._seq, rows)  # the next batch reads these before they are stored
        t1 = time.perf_counter()
        dead = self.pipeline.dead_letters
        outputs: list[OutMessage] = []
        letters: list[OutMessage] = []
        for m in out.messages:
            (letters if m.topic == dead else outputs).append(m)
        sent = [b.future for b in await send_batched(self.producer(), outputs)]
        sent += [await self._send_dead_letter(m) for m in letters]
        self._stage["publish"].inc(time.perf_counter() - t1)
        previous = self._tails[-1] if self._tails else None
        self._tails.append(asyncio.get_running_loop().create_task(
            self._finish(stream, admitted, out.messages, sent, rows, self._seq, previous)))

    async def _finish(self, stream: Any, admitted: list[Admitted], messages: list[OutMessage],
                      sent: list[Any], rows: dict[int, dict[bytes, bytes | None]], seq: int,
                      previous: asyncio.Task[None] | None) -> None:
        """Steps 1-4 of the module docstring for one batch, after the previous batch's."""
        try:
            await _all_delivered(sent)  # 1. predictions and dead letters are on the broker
            for m in messages:
                self.metrics.messages_produced.labels(m.topic).inc()
            if previous is not None:  # the changelog, the local store and the acks go in batch order
                await previous
            t0 = time.perf_counter()
            topic = self.table.changelog_topic  # 2. the changelog
            batches = await send_batched(self.producer(), (OutMessage(topic, p, k, v)
                                                           for p, kv in rows.items() for k, v in kv.items()))
            stored = await _all_delivered([b.future for b in batches])
            t1 = time.perf_counter()
            last: dict[int, int] = {}
            for b, meta in zip(batches, stored, strict=True):
                last[b.partition] = max(last.get(b.partition, -1), b.last_offset(meta))
            for p, kv in rows.items():
                self.table.put_local(p, kv, last.get(p))  # 3. the local copy
            self.in_flight.release(seq, rows)
            now = time.time()
            lat = self.metrics.latency
            for msg, gen, ev in admitted:  # 4. the acks, in offset order
                if ev is not None:  # a record re-read from the broker has no Faust event to ack
                    await stream.ack(ev)
                self.ledger.done(msg.tp, msg.offset, gen)
                if msg.timestamp:
                    lat.observe(max(now - msg.timestamp, 0.0))
            t2 = time.perf_counter()
            self._stage["changelog"].inc(t1 - t0)
            self._stage["ack"].inc(t2 - t1)
        except Exception as exc:  # noqa: BLE001 - an infrastructure fault: stop, unacknowledged
            _stop(exc)

    async def _send_dead_letter(self, m: OutMessage) -> Any:
        """Hand one dead letter to the producer (Faust's aiokafka producer, without Faust's buffer,
        so a failure raises here); returns its delivery future. One the broker cannot take as it
        is (too large for a request, unusable headers) goes as a truncated copy that says so,
        instead of stopping the worker on every restart."""
        send = self.app.producer.send
        try:
            return await send(m.topic, m.key, m.value, m.partition, None, m.headers)
        except Exception as exc:  # noqa: BLE001 - the input's fault, not the broker's
            size = len(m.value or b"")
            log.warning("dead letter not accepted as is (%r); sending a truncated copy", exc)
            headers = [(k, v) for k, v in (m.headers or []) if k.startswith("x-dlq-")
                       and isinstance(v, bytes)]
            headers.append(("x-dlq-truncated-from-bytes", str(size).encode()))
            return await send(m.topic, m.key, (m.value or b"")[:MAX_DEAD_LETTER_BYTES], m.partition,
                              None, headers)


async def _all_delivered(futures: list[Any]) -> list[Any]:
    """Wait for every delivery; the first failure raises (and nothing is acknowledged)."""
    return list(await asyncio.gather(*futures)) if futures else []


@dataclass(frozen=True)
class BrokerRecord:
    """A record read with our own consumer, shaped like the Faust message the pipeline reads."""
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp: float | None  # seconds, like Faust's

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


Admitted = tuple[Any, int, Any]  # (message, ledger generation, Faust event or None)


async def read_records(bootstrap: str, tp: Any, start: int, end: int,
                       client_kwargs: dict[str, Any] | None = None) -> list[BrokerRecord]:
    """The records with start <= offset < end of one partition, read with a consumer of our own
    (no group, nothing committed). Offsets without a record (transaction markers, compaction) are
    simply absent."""
    part = TopicPartition(tp.topic, tp.partition)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                isolation_level="read_uncommitted", **(client_kwargs or {}))
    await consumer.start()
    try:
        consumer.assign([part])
        consumer.seek(part, start)
        out: list[BrokerRecord] = []
        while await consumer.position(part) < end:
            for r in (await consumer.getmany(part, timeout_ms=1000)).get(part, []):
                if r.offset < end:
                    out.append(BrokerRecord(r.topic, r.partition, r.offset, r.key, r.value,
                                            list(r.headers or []), r.timestamp / 1000.0))
        return out
    finally:
        await consumer.stop()


# --- housekeeping -------------------------------------------------------------------------------

class IdleSweep:
    """Deletes users idle for longer than the window, per partition, in the partition they live in.

    Each partition has its own event-time clock: the newest accepted event time of that partition
    (accepted events are at most `max_future_s` ahead of real time, so no producer can push it
    forward), raised after a restart by the newest row it holds; a lagging partition is never
    expired by another one's clock. Only partitions this worker actively owns at the moment of
    deletion are touched; rows the agent is writing are skipped; the scan yields to the event loop
    every `chunk` rows.
    """

    def __init__(self, *, app: Any, table: Any, delivery: Delivery, window_s: float,
                 max_future_s: float, metrics: Metrics, forget: Callable[[Row], None],
                 chunk: int = 1000, churn_horizon: Callable[[], float] | None = None) -> None:
        self.app, self.table, self.delivery = app, table, delivery
        self.window_s, self.max_future_s = window_s, max_future_s
        self.metrics, self.forget, self.chunk = metrics, forget, chunk
        # online evaluation: an expired user's last churn prediction is scored (the horizon of
        # the model in service)
        self.churn_horizon = churn_horizon

    async def run(self) -> int:
        clocks = self.delivery.pipeline.event_clock
        limit = time.time() + self.max_future_s
        held = size = deleted = 0
        for p in sorted(self.table.active_partitions(self.app)):
            cutoff = min(clocks.get(p, 0.0), limit) - self.window_s
            candidates, newest, n, b = await self._scan(p, cutoff)
            if newest > 0:  # a restarted worker learns its clock from the rows it holds
                clocks[p] = max(clocks.get(p, 0.0), min(newest, limit))
            held += n
            size += b
            expired: list[Kept] = []
            for i, key in enumerate(candidates):
                if i % self.chunk == self.chunk - 1:
                    await asyncio.sleep(0)
                if p not in self.table.active_partitions(self.app):
                    break  # revoked meanwhile: the new owner sweeps it
                if (p, key.decode()) in self.delivery.in_flight:
                    continue
                raw = self.table.get(p, key)
                if raw is None or last_seen_of(raw) >= cutoff:
                    continue  # came back meanwhile
                await self.table.delete(p, key)
                self.forget((p, key.decode()))
                deleted += 1
                held -= 1
                size -= len(raw)
                kept = _kept_of(raw) if self.churn_horizon is not None else None
                if kept is not None:
                    expired.append(kept)
            if expired and self.churn_horizon is not None:
                self.metrics.add_online(evaluate_expired(expired, cutoff + self.window_s,
                                                         self.churn_horizon()))
        self.metrics.expired_users.inc(deleted)
        self.metrics.active_users.set(held)
        self.metrics.state_bytes.set(size)
        if deleted:
            log.info("expired %d idle users", deleted)
        return deleted

    async def _scan(self, p: int, cutoff: float) -> tuple[list[bytes], float, int, int]:
        candidates: list[bytes] = []
        newest = 0.0
        n = size = 0
        for key, raw in self.table.scan(p):
            try:
                seen = last_seen_of(raw)
            except Exception:  # noqa: BLE001 - a corrupt row is the agent's to replace
                continue
            newest = max(newest, seen)
            n += 1
            size += len(raw)
            if seen < cutoff:
                candidates.append(key)
            if n % self.chunk == 0:
                await asyncio.sleep(0)
                if p not in self.table.active_partitions(self.app):
                    return [], 0.0, 0, 0  # revoked mid-scan: stop using its database
        return candidates, newest, n, size


def _kept_of(raw: bytes) -> Kept | None:
    try:
        return decode(raw).last_prediction
    except Exception:  # noqa: BLE001 - an unreadable row is deleted unscored
        return None
