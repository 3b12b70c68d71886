"""The hot path: one agent, micro-batched; the only place that reads/writes the state table and
sends.

One event's path: `clickstream.events` (key = user_id) -> `parse_event` -> dead-letter topic
(original bytes + reason headers) or the accepted list -> `score_batch` (one GRU step per wave)
-> one table write per user per batch -> `predictions.next_action` + `predictions.churn`.

`handle_batch` is synchronous and returns the batch's predictions; the agent queues them with
Faust's `send_soon` without awaiting. Faust flushes that buffer before it commits offsets and acks
a batch only after the agent has queued it: at-least-once.

Error policy: bad data never crashes the worker (dead letters with a reason). If scoring a batch
raises, each event is retried alone and only the ones that still fail are dead-lettered
(`processing_error`); if every event fails, the fault is not in the data, so the worker exits
at once without acknowledging the batch, and its events are redelivered after the restart.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import weakref
from collections.abc import Sequence
from typing import Any

from faust.streams import _current_event  # the context var Faust's table writes read
from kafka.partitioner.default import murmur2

from .instruments import Metrics
from .predictor import Predictor
from .records import (
    KEY_MISMATCH,
    PROCESSING_ERROR,
    WRONG_PARTITION,
    Event,
    InvalidEvent,
    churn_payload,
    dead_letter_headers,
    next_action_payload,
    parse_event,
)
from .scoring import BatchResult, score_batch
from .state import StateLimits, UserState, decode, encode

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1 << 16)
def default_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2), as the Java, kafka-python and aiokafka clients use."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class EventPipeline:
    def __init__(self, *, metrics: Metrics, predictor: Predictor, table: Any, limits: StateLimits,
                 partitions: int, dead_letters: Any, next_action: str, churn: str,
                 valid_events: str | None = None) -> None:
        self.metrics = metrics
        self.predictor = predictor
        self.table = table
        self.limits = limits
        self.partitions = partitions
        self.dead_letters = dead_letters
        self.next_action = next_action
        self.churn = churn
        self.valid_events = valid_events
        self.watermark = 0.0  # newest event time seen: the clock of the expiry sweep
        self.offsets: dict[int, int] = {}  # partition -> last offset handled (consumer lag)
        m = metrics
        self._m_accepted = m.events_consumed.labels("accepted")
        self._m_rejected = m.events_consumed.labels("rejected")
        self._m_replayed = m.events_consumed.labels("replayed")
        self._m_sent_na = m.messages_produced.labels(next_action)
        self._m_sent_churn = m.messages_produced.labels(churn)
        self._m_sent_dlq = m.messages_produced.labels(dead_letters.get_topic_name())

    # --- entry point ------------------------------------------------------------------------
    def handle_batch(self, events: Sequence[Any]) -> dict[str, list[tuple[bytes, bytes]]]:
        """Validate, score and write state for one micro-batch; returns {topic: [(key, value)]}
        for the agent to publish."""
        t0 = time.perf_counter()
        self.outbox: dict[str, list[tuple[bytes, bytes]]] = {}
        accepted: list[tuple[Any, Event]] = []
        for ev in events:
            msg = ev.message
            self.offsets[msg.partition] = msg.offset
            try:
                if msg.key is None:
                    raise InvalidEvent(KEY_MISMATCH, "message has no key; the key must be the user_id")
                e = parse_event(msg.value, msg.key)
                if default_partition(msg.key, self.partitions) != msg.partition:
                    raise InvalidEvent(WRONG_PARTITION, "event is not in its key's default partition; "
                                       "its user's state lives elsewhere (use the default partitioner)")
            except InvalidEvent as err:
                self._dead_letter(msg, err)
                continue
            accepted.append((ev, e))
        if accepted:
            self._score_and_emit(accepted)
        self.metrics.batch_size.observe(len(events))
        self.metrics.batch_seconds.observe(time.perf_counter() - t0)
        return self.outbox

    # --- scoring ----------------------------------------------------------------------------
    def _score_and_emit(self, accepted: list[tuple[Any, Event]]) -> None:
        try:
            self._apply(accepted)
            return
        except Exception:  # noqa: BLE001 - isolate the poison event, or fail loudly below
            log.exception("scoring a batch of %d events failed; retrying one by one", len(accepted))
        failed = 0
        for fev, e in accepted:
            try:
                self._apply([(fev, e)])
            except Exception as exc:  # noqa: BLE001
                failed += 1
                self._dead_letter(fev.message, InvalidEvent(PROCESSING_ERROR, repr(exc)[:500]))
        if failed == len(accepted) and len(accepted) > 1:
            log.critical("every event of the batch failed: not a data problem; exiting without "
                         "acknowledging it so it is redelivered after a restart")
            os._exit(70)

    def _apply(self, accepted: list[tuple[Any, Event]]) -> None:
        evs = [e for _, e in accepted]
        last_event: dict[str, Any] = {}
        for fev, e in accepted:
            last_event[e.user_id] = fev
        states = {u: self._read_state(u) for u in last_event}
        t = time.perf_counter()
        result: BatchResult = score_batch(self.predictor, evs, states, self.limits)
        self.metrics.step_seconds.observe(time.perf_counter() - t)
        for u, st in result.states.items():
            # Faust writes a table row into the store of the *current event's* partition; in a
            # batch that must be this user's own event, not whichever came last.
            token = _current_event.set(weakref.ref(last_event[u]))
            try:
                self.table[u.encode()] = encode(st)
            finally:
                _current_event.reset(token)
        self._emit(accepted, result)

    def _read_state(self, user: str) -> UserState | None:
        raw = self.table.get(user.encode())
        if raw is None:
            return None
        try:
            return decode(raw)
        except Exception:  # noqa: BLE001 - a corrupt row must not stop the user's stream
            log.exception("unreadable state for a user; starting them afresh")
            self.metrics.state_errors.inc()
            return None

    def _emit(self, accepted: list[tuple[Any, Event]], result: BatchResult) -> None:
        now = time.time()
        version = self.predictor.version
        horizon = self.predictor.model.cfg.churn_horizon_s
        lat = self.metrics.latency
        na = self.outbox.setdefault(self.next_action, [])
        ch = self.outbox.setdefault(self.churn, [])
        for (fev, e), p in zip(accepted, result.predictions, strict=True):
            key = e.user_id.encode()
            na.append((key, next_action_payload(e, version, p.action_probs, p.top_items, now,
                                                p.replayed)))
            ch.append((key, churn_payload(e, version, p.churn_probability, horizon, now, p.replayed)))
            if e.ts > self.watermark:
                self.watermark = e.ts
            ts = fev.message.timestamp
            if ts:
                lat.observe(max(now - ts, 0.0))
        if self.valid_events is not None:
            self.outbox.setdefault(self.valid_events, []).extend(
                (e.user_id.encode(), e.to_json()) for _, e in accepted)
            self.metrics.messages_produced.labels(self.valid_events).inc(len(accepted))
        n = len(accepted)
        self._m_accepted.inc(n - result.stats["replayed"])
        self._m_replayed.inc(result.stats["replayed"])
        self.metrics.late_events.inc(result.stats["late"])
        self.metrics.rebuilt_states.inc(result.stats["rebuilt"])
        self._m_sent_na.inc(n)
        self._m_sent_churn.inc(n)

    def _dead_letter(self, msg: Any, err: InvalidEvent) -> None:
        headers = dead_letter_headers(err, msg.topic, msg.partition, msg.offset,
                                      _header_list(msg.headers))
        self.dead_letters.send_soon(key=msg.key, value=msg.value, headers=headers)
        self._m_rejected.inc()
        self.metrics.events_rejected.labels(err.reason).inc()
        self._m_sent_dlq.inc()
        log.debug("dead-lettered %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, err)

    # --- housekeeping (timers) ----------------------------------------------------------------
    def forget(self, user_key: bytes) -> None:
        self.predictor.cache.forget(user_key.decode())


def _header_list(headers: Any) -> list[tuple[str, bytes]]:
    if not headers:
        return []
    items = headers.items() if isinstance(headers, dict) else headers
    return [(k, v) for k, v in items]
