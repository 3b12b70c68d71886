"""Wire schemas: the input event (schema v1), its validation, and dead-letter headers.

Pure: no Kafka, no I/O. `parse_event` is the single gate every input message passes through; it
either returns an `Event` or raises `InvalidEvent` with a stable reason code (used as the
dead-letter header and as the Prometheus label, so the set is small and fixed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from models.actions import ACTION_INDEX, ACTIONS

SCHEMA_VERSION = 1
__all__ = ["ACTIONS", "ACTION_INDEX", "Event", "InvalidEvent", "churn_payload", "next_action_payload",
           "parse_event"]
MAX_EVENT_BYTES = 64 * 1024
MAX_STR_LEN = 512
MAX_PRICE = 1e12
# Unix seconds between 2000-01-01 and 2100-01-01: catches milliseconds sent as seconds.
MIN_TS, MAX_TS = 946_684_800.0, 4_102_444_800.0

# Reason codes (dead-letter header `x-dlq-reason`, metric label `reason`).
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
INVALID_TYPE = "invalid_type"
INVALID_VALUE = "invalid_value"
KEY_MISMATCH = "key_mismatch"
TOO_LARGE = "too_large"
FUTURE_TIMESTAMP = "future_timestamp"  # ahead of the worker's clock by more than the allowed skew
PROCESSING_ERROR = "processing_error"  # valid, but scoring it failed (a bug: see the worker log)
REASONS = (INVALID_JSON, NOT_AN_OBJECT, MISSING_FIELD, INVALID_TYPE, INVALID_VALUE, KEY_MISMATCH,
           TOO_LARGE, FUTURE_TIMESTAMP, PROCESSING_ERROR)


class InvalidEvent(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Event:
    event_id: str
    user_id: str
    ts: float  # unix seconds
    action: str
    item_id: str | None = None
    category_id: str | None = None
    price: float | None = None
    session_id: str | None = None
    query: str | None = None

    def to_json(self) -> bytes:
        d = {k: getattr(self, k) for k in self.__slots__}
        return orjson.dumps({k: v for k, v in d.items() if v is not None})


def _string(obj: dict[str, Any], field: str, required: bool) -> str | None:
    v = obj.get(field)
    if v is None:
        if required:
            raise InvalidEvent(MISSING_FIELD, f"'{field}' is required")
        return None
    if not isinstance(v, str):
        raise InvalidEvent(INVALID_TYPE, f"'{field}' must be a string, got {type(v).__name__}")
    if required and not v:
        raise InvalidEvent(INVALID_VALUE, f"'{field}' must not be empty")
    if len(v) > MAX_STR_LEN:
        raise InvalidEvent(INVALID_VALUE, f"'{field}' is longer than {MAX_STR_LEN} characters")
    return v


def _number(v: Any, field: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InvalidEvent(INVALID_TYPE, f"'{field}' must be a number, got {type(v).__name__}")
    f = float(v)
    if not math.isfinite(f):
        raise InvalidEvent(INVALID_VALUE, f"'{field}' must be finite")
    return f


def parse_ts(v: Any) -> float:
    """Unix seconds (number) or an RFC 3339 string with an offset -> unix seconds."""
    if v is None:
        raise InvalidEvent(MISSING_FIELD, "'ts' is required")
    if isinstance(v, str):
        try:
            dt = datetime.fromisoformat(v)
        except ValueError:
            raise InvalidEvent(INVALID_VALUE, f"'ts' is not an RFC 3339 timestamp: {v[:40]!r}") from None
        if dt.tzinfo is None:
            raise InvalidEvent(INVALID_VALUE, "'ts' string needs a UTC offset (RFC 3339)")
        ts = dt.timestamp()
    else:
        ts = _number(v, "ts")
    if not MIN_TS <= ts <= MAX_TS:
        hint = " (milliseconds? send seconds)" if ts > MAX_TS else ""
        raise InvalidEvent(INVALID_VALUE, f"'ts' {ts:.0f} is outside 2000..2100{hint}")
    return ts


def parse_event(raw: bytes | None, key: bytes | None = None) -> Event:
    """Validate one message value against schema v1. Unknown extra fields are ignored.

    `key`, when given, must equal the user id: the state for a user lives in the partition its key
    hashes to, so a mis-keyed event would silently fork that user's state.
    """
    if raw is None:
        raise InvalidEvent(INVALID_JSON, "empty message (tombstone)")
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent(TOO_LARGE, f"{len(raw)} bytes > {MAX_EVENT_BYTES}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidEvent(INVALID_JSON, str(e)[:200]) from None
    if not isinstance(obj, dict):
        raise InvalidEvent(NOT_AN_OBJECT, f"expected a JSON object, got {type(obj).__name__}")
    event_id = _string(obj, "event_id", True)
    user_id = _string(obj, "user_id", True)
    action = _string(obj, "action", True)
    if action not in ACTION_INDEX:
        raise InvalidEvent(INVALID_VALUE, f"unknown action {action!r}; expected one of {ACTIONS}")
    ts = parse_ts(obj.get("ts"))
    item_id = _string(obj, "item_id", action != "search")
    price = obj.get("price")
    if price is not None:
        price = _number(price, "price")
        if not 0 <= price <= MAX_PRICE:  # an absurd price would overflow float32 state
            raise InvalidEvent(INVALID_VALUE, f"'price' must be between 0 and {MAX_PRICE:g}")
    if key is not None and key.decode("utf-8", "replace") != user_id:
        raise InvalidEvent(KEY_MISMATCH, "message key must equal user_id")
    return Event(
        event_id=event_id,  # type: ignore[arg-type]  # required => not None
        user_id=user_id,  # type: ignore[arg-type]
        ts=ts,
        action=action,  # type: ignore[arg-type]
        item_id=item_id,
        category_id=_string(obj, "category_id", False),
        price=price,
        session_id=_string(obj, "session_id", False),
        query=_string(obj, "query", False),
    )


def check_not_future(event: Event, now: float, max_future_s: float) -> None:
    """Policy: event time drives state expiry, so no producer may push it ahead of real time. An
    event more than `max_future_s` ahead of the worker's wall clock is dead-lettered, not clamped
    (a clamped time would be a made-up fact in the user's window)."""
    if event.ts > now + max_future_s:
        raise InvalidEvent(FUTURE_TIMESTAMP, f"'ts' is {event.ts - now:.0f} s ahead of the worker's clock "
                           f"(at most {max_future_s:g} s of skew is accepted)")


PREDICTION_SCHEMA_VERSION = 1


def next_action_payload(event: Event, model_version: str, action_probs: Sequence[float],
                        item_ids: Sequence[str], item_probs: Sequence[float], emitted_ts: float,
                        replayed: bool) -> bytes:
    """`predictions.next_action` value (key = user_id): `item_ids` best first, `item_probs`
    their probabilities. See schemas/next_action.schema.json."""
    return orjson.dumps({
        "schema_version": PREDICTION_SCHEMA_VERSION, "event_id": event.event_id,
        "user_id": event.user_id, "event_ts": event.ts, "action": event.action,
        "model_version": model_version,
        "action_probs": {a: float(p) for a, p in zip(ACTIONS, action_probs, strict=True)},
        "top_items": [{"item_id": i, "score": s} for i, s in zip(item_ids, item_probs, strict=True)],
        "emitted_ts": emitted_ts, "replayed": replayed,
    })


def churn_payload(event: Event, model_version: str, churn_probability: float, horizon_s: float,
                  emitted_ts: float, replayed: bool) -> bytes:
    """`predictions.churn` value (key = user_id). See schemas/churn.schema.json."""
    return orjson.dumps({
        "schema_version": PREDICTION_SCHEMA_VERSION, "event_id": event.event_id,
        "user_id": event.user_id, "event_ts": event.ts, "model_version": model_version,
        "churn_probability": churn_probability, "horizon_s": horizon_s,
        "emitted_ts": emitted_ts, "replayed": replayed,
    })


def dead_letter_headers(err: InvalidEvent, topic: str, partition: int, offset: int,
                        original: list[tuple[str, bytes]] | None = None) -> list[tuple[str, bytes]]:
    """Original headers first, then why the message was rejected and where it came from."""
    return [
        *(original or []),
        ("x-dlq-reason", err.reason.encode()),
        ("x-dlq-message", err.message.encode("utf-8", "replace")[:1000]),
        ("x-dlq-source-topic", topic.encode()),
        ("x-dlq-source-partition", str(partition).encode()),
        ("x-dlq-source-offset", str(offset).encode()),
        ("x-dlq-schema-version", str(SCHEMA_VERSION).encode()),
    ]
