"""Per-user state: the recent window, the GRU hidden state and the model version that made it,
and a small profile. Pure data and pure transitions; a compact binary encoding for the table.

Transition: `observe(state | None, event, limits) -> (state, Observation)`. It updates the window
and profile; the hidden state is advanced by scoring.py, which owns the model.

Profile (what a `churn_profile` model's churn head reads, models.features.profile): the events
applied since the user's last idle reset (`action_counts`, summing to that number), the time of
the first of them (`first_seen`; a late event never moves it back) and of the newest
(`last_seen`). An event more than `window_seconds` after the newest one restarts the profile, as
the idle sweep's delete would have and as training starts a new row there. `n_events` counts
every applied event of the row, resets included (the hidden-state cache keys on it). Rows
written before this rule may hold counts and a `first_seen` from before a reset (or the earliest
time rather than the first arrival's) until their next reset.

Late and out-of-order events (policy): events are applied in arrival order, which Kafka keeps
per user. An event older than the user's latest one gets a time gap of 0 and never moves
`last_seen` backwards. An event whose id is already in the window is a replay (at-least-once
redelivery, or a storefront retry): it does not advance the state again, but it still gets its
predictions, flagged `replayed`, so nothing is lost after a crash. Redelivery is recognised by the
input offset as well: a row lives in the partition its user's events arrive on, so every event it
has applied has an offset at or below the row's `offset`, however many of them left the window.

Encoding (little-endian): a fixed header (format 2 adds the last applied input offset), the model
version, the hidden state as float32 bytes,
then the window as columns (actions u8, ts f64, price f32, event-id hashes u64) and
length-prefixed item/category ids; format 3 appends the prediction that followed the newest event
(online_eval.Kept: a flag byte, the version only when it differs from the state's, event time f64,
churn f32, action probabilities f16, top-K item-id hashes u32; about 70 bytes at K=10), which the
next event scores. About 1.4 KB per user at hidden size 128 and a 20-event window.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from models.features import WindowLimits

from .online_eval import Kept
from .records import ACTION_INDEX, Event

FORMAT = 3  # written by this code; format 1 (no offset) and 2 (no kept prediction) rows are still read
# format, window len, hidden floats, n_events, first, last, spend, counts[, last applied offset]
_HEAD_V1 = struct.Struct("<BBHIddd6I")
_HEAD = struct.Struct("<BBHIddd6Iq")
_NONE = 0xFFFF
_PRED = struct.Struct("<dfBB")  # kept prediction: ts, churn, number of actions, number of items
_NO_PRED, _PRED_SAME_VERSION, _PRED_OWN_VERSION = 0, 1, 2


class NewerStateFormat(RuntimeError):
    """A row written by a newer worker (a rolling deploy in progress). Never overwrite it: this
    worker must not serve the user until it is upgraded, so the event is not acknowledged."""


@dataclass(frozen=True)
class WindowEvent:
    action: int
    ts: float
    price: float  # NaN when absent
    item_id: str | None
    category_id: str | None
    event_hash: int  # 64-bit hash of event_id (replay detection without storing ids)


@dataclass(frozen=True)
class UserState:
    model_version: str = ""
    hidden: np.ndarray | None = None  # (layers * H,) float32; None = no history for this model
    n_events: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0
    spend: float = 0.0
    action_counts: tuple[int, ...] = (0, 0, 0, 0, 0, 0)
    window: tuple[WindowEvent, ...] = ()
    offset: int = -1  # input offset of the newest applied event (in the row's partition); -1 unknown
    last_prediction: Kept | None = None  # what followed the newest applied event (online eval)


@dataclass(frozen=True)
class Observation:
    gap_s: float  # seconds since the user's newest earlier event (0 for the first, late or replayed)
    replayed: bool
    late: bool
    # more than `window_seconds` after the user's newest event: the user starts afresh (scoring
    # zeroes the hidden state, the profile restarts; models.features.is_reset)
    reset: bool = False


def event_hash(event_id: str) -> int:
    return zlib.crc32(event_id.encode()) << 32 | zlib.adler32(event_id.encode())


def observe(state: UserState | None, ev: Event, limits: WindowLimits,
            offset: int = -1) -> tuple[UserState, Observation]:
    """Apply one event's window and profile effects (not the hidden state). `offset` is the event's
    input offset (in the partition the state row lives in), or -1 when unknown."""
    h = event_hash(ev.event_id)
    if state is None:
        state = UserState(first_seen=ev.ts, last_seen=ev.ts)
    elif (0 <= offset <= state.offset) or any(w.event_hash == h for w in state.window):
        return state, Observation(0.0, replayed=True, late=False)
    late = state.n_events > 0 and ev.ts < state.last_seen
    gap = 0.0 if state.n_events == 0 or late else ev.ts - state.last_seen
    reset = gap > limits.seconds
    last_seen = max(state.last_seen, ev.ts) if state.n_events else ev.ts
    price = math.nan if ev.price is None else ev.price
    new = WindowEvent(ACTION_INDEX[ev.action], ev.ts, price, ev.item_id, ev.category_id, h)
    horizon = last_seen - limits.seconds
    keep = state.window[max(0, len(state.window) - (limits.events - 1)):]
    if limits.events <= 1:
        keep = ()
    window = tuple(w for w in keep if w.ts >= horizon) + (new,)
    # the profile (first_seen, action_counts, spend) restarts at a reset, as training starts a
    # new row there; n_events does not (it keys the hidden-state cache: it must never go back)
    counts = [0] * len(state.action_counts) if reset else list(state.action_counts)
    counts[new.action] += 1
    spend = 0.0 if reset else state.spend
    spend += price if ev.action == "purchase" and not math.isnan(price) else 0.0
    # the constructor, not dataclasses.replace: this runs once per event (replace costs ~4x)
    return UserState(model_version=state.model_version, hidden=state.hidden,
                     n_events=state.n_events + 1, first_seen=ev.ts if reset else state.first_seen,
                     last_seen=last_seen, spend=spend, action_counts=tuple(counts), window=window,
                     offset=max(state.offset, offset),
                     last_prediction=state.last_prediction), Observation(gap, False, late, reset)


# --- encoding ------------------------------------------------------------------------------

def _put_str(parts: list[bytes], s: str | None) -> None:
    if s is None:
        parts.append(struct.pack("<H", _NONE))
    else:
        b = s.encode()
        parts.append(struct.pack("<H", len(b)))
        parts.append(b)


def encode(s: UserState) -> bytes:
    hidden = b"" if s.hidden is None else np.asarray(s.hidden, np.float32).tobytes()
    w = s.window
    parts = [_HEAD.pack(FORMAT, len(w), len(hidden) // 4, s.n_events, s.first_seen, s.last_seen,
                        s.spend, *s.action_counts, s.offset)]
    _put_str(parts, s.model_version)
    parts.append(hidden)
    parts.append(bytes(e.action for e in w))
    parts.append(np.array([e.ts for e in w], "<f8").tobytes())
    parts.append(np.array([e.price for e in w], "<f4").tobytes())
    parts.append(np.array([e.event_hash for e in w], "<u8").tobytes())
    for e in w:
        _put_str(parts, e.item_id)
        _put_str(parts, e.category_id)
    _put_prediction(parts, s.last_prediction, s.model_version)
    return b"".join(parts)


def _put_prediction(parts: list[bytes], k: Kept | None, state_version: str) -> None:
    if k is None:
        parts.append(bytes([_NO_PRED]))
        return
    if k.version == state_version:
        parts.append(bytes([_PRED_SAME_VERSION]))
    else:
        parts.append(bytes([_PRED_OWN_VERSION]))
        _put_str(parts, k.version)
    parts.append(_PRED.pack(k.ts, k.churn, len(k.action_probs), len(k.items)))
    parts.append(np.asarray(k.action_probs, "<f2").tobytes())
    parts.append(np.asarray(k.items, "<u4").tobytes())


def _get_prediction(buf: bytes, off: int, state_version: str) -> Kept | None:
    flag = buf[off]
    off += 1
    if flag == _NO_PRED:
        return None
    version: str | None = state_version
    if flag == _PRED_OWN_VERSION:
        version, off = _get_str(buf, off)
    ts, churn, n_a, n_i = _PRED.unpack_from(buf, off)
    off += _PRED.size
    probs = np.frombuffer(buf, "<f2", n_a, off).copy()
    off += 2 * n_a
    items = np.frombuffer(buf, "<u4", n_i, off).copy()
    return Kept(version or "", ts, probs, churn, items)


def _get_str(buf: bytes, off: int) -> tuple[str | None, int]:
    (n,) = struct.unpack_from("<H", buf, off)
    off += 2
    if n == _NONE:
        return None, off
    return buf[off:off + n].decode(), off + n


def format_of(buf: bytes) -> int:
    return buf[0] if buf else 0


def decode(buf: bytes) -> UserState:
    fmt = format_of(buf)
    if fmt > FORMAT:
        raise NewerStateFormat(f"user-state row has format {fmt}; this worker reads up to {FORMAT}")
    if fmt == 1:
        _, n, n_hidden, n_events, first, last, spend, *counts = _HEAD_V1.unpack_from(buf, 0)
        offset, off = -1, _HEAD_V1.size
    elif fmt in (2, 3):
        _, n, n_hidden, n_events, first, last, spend, *counts, offset = _HEAD.unpack_from(buf, 0)
        off = _HEAD.size
    else:
        raise ValueError(f"unknown user-state format {fmt}")
    version, off = _get_str(buf, off)
    hidden = np.frombuffer(buf, "<f4", n_hidden, off).copy() if n_hidden else None
    off += 4 * n_hidden
    actions = buf[off:off + n]
    off += n
    ts = np.frombuffer(buf, "<f8", n, off)
    off += 8 * n
    price = np.frombuffer(buf, "<f4", n, off)
    off += 4 * n
    hashes = np.frombuffer(buf, "<u8", n, off)
    off += 8 * n
    window = []
    for i in range(n):
        item, off = _get_str(buf, off)
        cat, off = _get_str(buf, off)
        window.append(WindowEvent(actions[i], float(ts[i]), float(price[i]), item, cat, int(hashes[i])))
    kept = _get_prediction(buf, off, version or "") if fmt >= 3 else None
    return UserState(version or "", hidden, n_events, first, last, spend, tuple(counts), tuple(window),
                     offset, kept)


def last_seen_of(buf: bytes) -> float:
    """Cheap read for the expiry sweep: no full decode (the field sits at the same place in every
    format)."""
    return float(_HEAD_V1.unpack_from(buf, 0)[5])
