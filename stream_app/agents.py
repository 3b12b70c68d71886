"""The hot path: one agent, micro-batched, the only place that sends.

One event's path: `clickstream.events` (key = user_id) -> `parse_event` -> either the dead-letter
topic (original bytes + reason headers) or the accepted batch -> output topics. Sends use the
producer's buffer (`send_soon`, no await per message); Faust flushes that buffer before it commits
offsets, and acks a batch only after this function returns, so delivery is at-least-once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from .instruments import Metrics
from .records import Event, InvalidEvent, dead_letter_headers, parse_event

log = logging.getLogger(__name__)


class EventPipeline:
    """Holds the output topics and metrics; `handle_batch` processes one micro-batch of events."""

    def __init__(self, *, metrics: Metrics, dead_letters: Any, valid_events: Any | None) -> None:
        self.metrics = metrics
        self.dead_letters = dead_letters
        self.valid_events = valid_events
        self._m_accepted = metrics.events_consumed.labels("accepted")
        self._m_rejected = metrics.events_consumed.labels("rejected")

    def handle_batch(self, events: Sequence[Any]) -> list[Event]:
        """Validate a batch of Faust events; dead-letter the bad ones; return the good, in order."""
        t0 = time.perf_counter()
        accepted: list[Event] = []
        for ev in events:
            msg = ev.message
            try:
                accepted.append(parse_event(msg.value, msg.key))
            except InvalidEvent as err:
                self._dead_letter(msg, err)
        self._m_accepted.inc(len(accepted))
        if self.valid_events is not None:
            send = self.valid_events.send_soon
            for e in accepted:
                send(key=e.user_id.encode(), value=e.to_json())
            self.metrics.messages_produced.labels(self.valid_events.get_topic_name()).inc(len(accepted))
        self.metrics.batch_size.observe(len(events))
        self.metrics.batch_seconds.observe(time.perf_counter() - t0)
        return accepted

    def _dead_letter(self, msg: Any, err: InvalidEvent) -> None:
        headers = dead_letter_headers(err, msg.topic, msg.partition, msg.offset,
                                      _header_list(msg.headers))
        self.dead_letters.send_soon(key=msg.key, value=msg.value, headers=headers)
        self._m_rejected.inc()
        self.metrics.events_rejected.labels(err.reason).inc()
        self.metrics.messages_produced.labels(self.dead_letters.get_topic_name()).inc()
        log.debug("dead-lettered %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, err)


def _header_list(headers: Any) -> list[tuple[str, bytes]]:
    if not headers:
        return []
    items = headers.items() if isinstance(headers, dict) else headers
    return [(k, v) for k, v in items]
