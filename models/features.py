"""The model's per-event inputs, defined once for training, the state rebuild and the stream.

The stream's semantics are the definition (stream_app/state.py `observe` applies them one event
at a time; this module applies them to whole sequences). Events come in arrival order, which
Kafka keeps per user, not sorted by time:

- replay: an event whose id is already in the user's window is dropped (it changes nothing);
- gap: seconds since the newest earlier event (0 for the first event; 0 for a late event, one
  older than the newest seen so far);
- idle reset: an event more than `WindowLimits.seconds` after the newest earlier event starts the
  user afresh (hidden state zero, gap 0). The idle sweep expires such users whenever it runs;
  stream_app/scoring.py resets them at that event whether or not it has run, and training starts
  a new sequence there (`split_points`);
- window: after each event, the last `events - 1` events of the previous window that are no more
  than `seconds` older than the newest event, plus the new one (count trim, then time trim: the
  result is not always a contiguous run of events). The model sees its last W items;
- profile (read by a `churn_profile` model's churn head, models.gru.profile_inputs): after each
  event, the number of events applied since the user's last idle reset (this one included), the
  newest event's time minus the first's of them, and each action's count among them. Training
  derives it from a row (`gru.sequence_profile`: running counts, the sum of the gaps); the
  stream keeps the same three numbers in its UserState and restarts them at a reset (`profile`).
  It feeds only the churn head, never the hidden state.

`encode` turns arrays of these into `Events`; every path builds its tensors through it, so the
dtypes and the log scaling agree to the bit. Who calls what: training (models/datasets.py
`events_to_seqdata`: `applied`, `split_points`; models/data.py `make_batch`: `gaps`, `windows`,
`encode`), the rebuild after a model swap (stream_app/predictor.py `rebuild`: the same three over
the stored window), the stream's step (predictor `step_inputs`: `encode` over observe()'s gap
and stored window, and `profile` over the state's) and step-by-step evaluation (models/train.py
`run_incremental`, the retrain judge's path: slices of `make_batch`). tests/test_features.py
holds the paths equal. Pure numpy/torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .gru import Events, profile_inputs, sliding_windows


@dataclass(frozen=True)
class WindowLimits:
    """What the stream keeps per user (CLICKSTREAM_WINDOW_EVENTS/_SECONDS; stream_app.state
    `observe` applies it one event at a time)."""

    events: int = 20  # N: at least the model's window
    seconds: float = 86400.0  # T: events further behind the newest leave; a longer pause resets


SERVING_DEFAULTS = WindowLimits()  # the service's defaults (CLICKSTREAM_WINDOW_EVENTS/_SECONDS)


def gaps(ts: np.ndarray) -> np.ndarray:
    """(..., T) times in arrival order -> (..., T) seconds since the newest earlier event, 0 for
    the first and for late events. Causal: right-padding does not change earlier entries."""
    ts = np.asarray(ts, np.float64)
    g = np.zeros_like(ts)
    if ts.shape[-1] > 1:
        newest = np.maximum.accumulate(ts, axis=-1)
        g[..., 1:] = np.maximum(ts[..., 1:] - newest[..., :-1], 0.0)
    return g


def is_reset(gap: np.ndarray, limits: WindowLimits) -> np.ndarray:
    """(...) gaps -> (...) bool: an event this long after the newest earlier one starts the user
    afresh. (Its window holds only itself anyway: every earlier event is past the time trim.)"""
    return np.asarray(gap) > limits.seconds


def _slide(win: list[int], t: int, ts: Sequence[float] | np.ndarray, newest: float,
           limits: WindowLimits) -> list[int]:
    """observe's window step, over positions: the last `events - 1` of `win` no more than
    `seconds` older than `newest`, then `t`."""
    keep = win[max(0, len(win) - (limits.events - 1)):] if limits.events > 1 else []
    return [j for j in keep if ts[j] >= newest - limits.seconds] + [t]


def window_steps(ts: Sequence[float], limits: WindowLimits) -> list[list[int]]:
    """The stored window after each event of one sequence, as positions (observe's recursion)."""
    out: list[list[int]] = []
    win: list[int] = []
    newest = -np.inf
    for t, x in enumerate(ts):
        newest = max(newest, x)
        win = _slide(win, t, ts, newest, limits)
        out.append(win)
    return out


def applied(ts: np.ndarray, ids: Sequence[str], limits: WindowLimits) -> np.ndarray:
    """Positions of one user's events (arrival order) that the stream applies: replays of an
    event still in the window are dropped."""
    if len(set(ids)) == len(ids):
        return np.arange(len(ids))
    kept: list[int] = []
    win: list[int] = []  # positions of the applied events in the window
    newest = -np.inf
    for i, key in enumerate(ids):
        if any(ids[j] == key for j in win):
            continue
        newest = max(newest, float(ts[i]))
        win = _slide(win, i, ts, newest, limits)
        kept.append(i)
    return np.asarray(kept, np.int64)


def split_points(ts: np.ndarray, limits: WindowLimits) -> np.ndarray:
    """Positions (after the first) where one applied sequence starts afresh (idle resets)."""
    return np.nonzero(is_reset(gaps(ts), limits))[0]


def windows(item: torch.Tensor, ts: np.ndarray, lengths: np.ndarray, W: int,
            limits: WindowLimits) -> torch.Tensor:
    """(B, T) item indices and times (right-padded; rows are applied sequences from a fresh
    start) -> (B, T, W): at t, the last W items of the stored window, oldest first, left-padded
    with 0. Time-ordered rows take the vectorised path (their window is a contiguous run)."""
    B, T = item.shape
    win = sliding_windows(item, W).clone()
    if B == 0 or T == 0:
        return win
    newest = np.maximum.accumulate(ts, axis=1)
    valid = np.arange(T)[None, :] < lengths[:, None]
    unsorted = ((np.diff(ts, axis=1) < 0) & valid[:, 1:]).any(1)
    # slot W-1-d holds the event d steps back: kept while within N events and T seconds
    drop = np.zeros((B, T, W), bool)
    for d in range(1, W):
        back = np.full((B, T), -np.inf)
        back[:, d:] = ts[:, :-d]
        drop[:, :, W - 1 - d] = (d >= limits.events) | (back < newest - limits.seconds)
    win[torch.from_numpy(drop)] = 0
    for b in np.nonzero(unsorted)[0]:
        n = int(lengths[b])
        for t, pos in enumerate(window_steps(ts[b, :n].tolist(), limits)):
            tail = pos[-W:]
            win[b, t] = 0
            win[b, t, W - len(tail):] = item[b, tail]
    return win


def profile(n_events: np.ndarray, age_s: np.ndarray, action_counts: np.ndarray) -> torch.Tensor:
    """(...) events since the reset, (...) seconds from the first of them to the newest,
    (..., A) counts -> (..., PROFILE_DIM) churn-head profile (`gru.profile_inputs`)."""
    return profile_inputs(torch.from_numpy(np.asarray(n_events, np.float64)),
                          torch.from_numpy(np.asarray(age_s, np.float64)),
                          torch.from_numpy(np.asarray(action_counts, np.float64)))


def encode(action: np.ndarray, item: np.ndarray, category: np.ndarray, gap: np.ndarray,
           price: np.ndarray, window: np.ndarray | torch.Tensor,
           profile: torch.Tensor | None = None) -> Events:
    """Arrays of shape (...) (window (..., W)) -> Events. `gap` in seconds, `price` NaN when
    absent; `profile` (..., PROFILE_DIM) from `profile` (None: none, as forward from a fresh
    start derives it). The one place where gaps and prices are scaled."""
    price = np.asarray(price, np.float32)
    gap = np.maximum(np.asarray(gap, np.float64), 0.0)
    return Events(
        action=torch.as_tensor(np.asarray(action, np.int64)),
        item=torch.as_tensor(np.asarray(item, np.int64)),
        category=torch.as_tensor(np.asarray(category, np.int64)),
        log_gap=torch.from_numpy(np.log1p(gap).astype(np.float32)),
        log_price=torch.from_numpy(np.nan_to_num(np.log1p(price), nan=0.0).astype(np.float32)),
        has_price=torch.from_numpy((~np.isnan(price)).astype(np.float32)),
        window=torch.as_tensor(window),
        profile=profile,  # type: ignore[arg-type]
    )
