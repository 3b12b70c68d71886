"""The storefront producer API: send clickstream events to the service the way it wants them.

    from stream_app.client import StorefrontClient

    with StorefrontClient() as client:              # settings from the environment (Settings)
        rejected = client.send({"event_id": "e1", "user_id": "u1", "ts": 1767225600.0,
                                "action": "view", "item_id": "i42"})
        if rejected:                                 # invalid: not sent, with the reason
            print(rejected.reason, rejected.message)
        report = client.flush()                      # wait for the broker's acknowledgements

Each event is validated by the worker's own gate (records.parse_event, and the same future-time
limit), so an event the client accepts is one the worker accepts; a rejected event is returned to
the caller with the worker's reason code (`missing_field`, `invalid_value`, ...) instead of
becoming a dead letter later. Accepted events are keyed by user id (a user's events stay in one
partition, in order: the producer is idempotent) and batched by the producer (`linger_ms`).

Side effects: one kafka-python producer (security settings from Settings), network I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from .config import Settings
from .kafka_clients import Deliveries, close_producer, make_producer
from .records import INVALID_TYPE, InvalidEvent, check_not_future, parse_event

Event = Mapping[str, Any] | bytes  # a schema-v1 event as a dict, or its JSON


@dataclass(frozen=True)
class Rejected:
    event: Event  # as the caller passed it
    reason: str  # records.py reason code, as the worker's dead letters would carry it
    message: str


@dataclass(frozen=True)
class FlushReport:
    delivered: int  # acknowledged by the broker since the previous flush
    failed: list[tuple[str, str]] = field(default_factory=list)  # (event_id, error) not delivered


class StorefrontClient:
    def __init__(self, settings: Settings | None = None, *, topic: str | None = None,
                 linger_ms: int = 5, batch_size: int = 64 * 1024, connect_attempts: int = 3,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings or Settings.from_env()
        self.topic = topic or self.settings.topics.events
        self.clock = clock
        self._producer = make_producer(self.settings, "storefront-client", attempts=connect_attempts,
                                       linger_ms=linger_ms, batch_size=batch_size)
        self._deliveries = Deliveries(self.settings.bootstrap)
        self._failed: list[tuple[str, str]] = []
        self._acked_at_flush = 0

    def validate(self, event: Event) -> tuple[bytes, str, str]:
        """(value, user id, event id) of a valid event; raises InvalidEvent with the reason."""
        try:
            raw = event if isinstance(event, bytes) else orjson.dumps(event)
        except TypeError as exc:  # a value JSON cannot carry (a datetime, a set, ...)
            raise InvalidEvent(INVALID_TYPE, str(exc)[:200]) from None
        ev = parse_event(raw)
        check_not_future(ev, self.clock(), self.settings.max_future_s)
        return raw, ev.user_id, ev.event_id

    def send(self, event: Event) -> Rejected | None:
        """Validate and hand one event to the producer (batched, not yet acknowledged: `flush`).
        Returns None when accepted, or why it was not sent. Raises BrokerUnavailable when the
        broker has acknowledged nothing for a while."""
        try:
            raw, user_id, event_id = self.validate(event)
        except InvalidEvent as err:
            return Rejected(event, err.reason, err.message)
        self._deliveries.check(failures=False)
        future = self._producer.send(self.topic, key=user_id.encode(), value=raw)
        self._deliveries.watch(future)
        future.add_errback(lambda exc, eid=event_id: self._failed.append((eid, repr(exc))))
        return None

    def send_batch(self, events: Iterable[Event]) -> list[Rejected]:
        """`send` for each event; the rejected ones, in order."""
        return [r for r in map(self.send, events) if r is not None]

    def flush(self) -> FlushReport:
        """Wait until every event sent so far is acknowledged (or failed); what happened since
        the previous flush."""
        self._deliveries.drain(self._producer, failures=False)
        acked = self._deliveries.acked
        report = FlushReport(acked - self._acked_at_flush, self._failed)
        self._acked_at_flush, self._failed = acked, []
        return report

    def close(self) -> None:
        close_producer(self._producer, self._deliveries)

    def __enter__(self) -> StorefrontClient:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self.flush()
        finally:
            self.close()
