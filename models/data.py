"""Sequences to batches: vocabularies, compact per-user sequences, labels, time splits.

Storage is CSR-like: flat numpy arrays for all events plus `offsets` (one row per user or
session in arrival order; a row the stream would apply from a fresh start, see models.features).
Inputs are encoded by models.features under `limits` (the stream's window). Labels are derived,
never stored:
- next item / next action: the user's next event (ignored at the last event);
- churn: 1 if the gap to the next event exceeds the horizon, 0 if not; censored (no label) when
  the data ends less than one horizon after this event, whatever happened next.
Pure numpy/torch; readers of files take paths and return arrays.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from . import features
from .features import SERVING_DEFAULTS, WindowLimits
from .gru import Events, GRUConfig

IGNORE = -100


@dataclass(frozen=True)
class Vocab:
    """Known ids -> 1..n; unknown ids -> one of `buckets` hashed slots after them; None -> 0."""

    ids: tuple[str, ...]
    buckets: int
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {k: i + 1 for i, k in enumerate(self.ids)})

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, key: str | None) -> int:
        if key is None:
            return 0
        i = self._index.get(key)
        if i is not None:
            return i
        return 1 + len(self.ids) + zlib.crc32(key.encode()) % self.buckets

    @classmethod
    def build(cls, keys: Iterable[str | None], buckets: int, min_count: int = 1) -> Vocab:
        counts: dict[str, int] = {}
        for k in keys:
            if k is not None:
                counts[k] = counts.get(k, 0) + 1
        kept = sorted((k for k, c in counts.items() if c >= min_count), key=lambda k: (-counts[k], k))
        return cls(tuple(kept), buckets)


@dataclass
class SeqData:
    offsets: np.ndarray  # (S+1,) int64
    action: np.ndarray  # (N,) int64
    item: np.ndarray  # (N,) int64 vocabulary indices, 0 = none
    category: np.ndarray  # (N,) int64
    ts: np.ndarray  # (N,) float64 unix seconds (0 when the data has no time)
    price: np.ndarray  # (N,) float32, NaN when absent
    end_ts: float  # when the observation window ends (churn censoring)
    has_time: bool = True
    keys: list[str] | None = None  # user/session id per row
    origin: np.ndarray | None = None  # (N,) index of each event in the caller's original list
    limits: WindowLimits = SERVING_DEFAULTS  # the stream's window, which the inputs reproduce
    # (N,) time of the user's next event, NaN if none: churn labels span the row ends that an
    # idle reset makes (None: the next event in the row)
    next_ts: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def before(self, cutoff: float) -> SeqData:
        """Only events with ts < cutoff, observation ending at cutoff (a time-ordered train set)."""
        keep = self.ts < cutoff
        row_of = np.repeat(np.arange(len(self)), self.lengths())
        counts = np.bincount(row_of[keep], minlength=len(self))
        has = counts > 0
        keys = [k for k, h in zip(self.keys, has, strict=True) if h] if self.keys else None
        return SeqData(np.concatenate([[0], np.cumsum(counts[has])]).astype(np.int64),
                       self.action[keep], self.item[keep], self.category[keep], self.ts[keep],
                       self.price[keep], float(cutoff), self.has_time, keys,
                       None if self.origin is None else self.origin[keep], self.limits,
                       None if self.next_ts is None
                       else np.where(self.next_ts < cutoff, self.next_ts, np.nan)[keep])


def from_sequences(seqs: Iterable[Sequence[tuple]], has_time: bool, end_ts: float | None = None,
                   keys: list[str] | None = None, limits: WindowLimits = SERVING_DEFAULTS) -> SeqData:
    """Rows of (action, item_idx, category_idx, ts, price_or_nan) tuples -> SeqData."""
    flat: list[tuple] = []
    offsets = [0]
    for s in seqs:
        flat.extend(s)
        offsets.append(len(flat))
    arr = np.array(flat, dtype=np.float64).reshape(-1, 5)
    ts = arr[:, 3]
    return SeqData(np.array(offsets, np.int64), arr[:, 0].astype(np.int64),
                   arr[:, 1].astype(np.int64), arr[:, 2].astype(np.int64), ts,
                   arr[:, 4].astype(np.float32),
                   float(end_ts if end_ts is not None else (ts.max() if len(ts) else 0.0)),
                   has_time, keys, limits=limits)


@dataclass
class Batch:
    x: Events  # (B, T)
    next_item: torch.Tensor  # (B, T) long, 0 = no label
    next_action: torch.Tensor  # (B, T) long, IGNORE = no label
    churn: torch.Tensor  # (B, T) float, -1 = censored / no label
    valid: torch.Tensor  # (B, T) bool, real (non-padding) positions
    rows: np.ndarray  # which SeqData rows, in batch order

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.x.to(device), self.next_item.to(device), self.next_action.to(device),
                     self.churn.to(device), self.valid.to(device), self.rows)


def make_batch(data: SeqData, rows: Sequence[int], cfg: GRUConfig) -> Batch:
    lens = data.lengths()[list(rows)]
    B, T = len(rows), int(lens.max())
    action = np.zeros((B, T), np.int64)
    item = np.zeros((B, T), np.int64)
    cat = np.zeros((B, T), np.int64)
    ts = np.zeros((B, T), np.float64)
    price = np.full((B, T), np.nan, np.float32)
    valid = np.zeros((B, T), bool)
    after = np.full((B, T), np.nan)  # the user's next event time, where the data says
    for b, r in enumerate(rows):
        s, e = data.offsets[r], data.offsets[r + 1]
        n = e - s
        action[b, :n], item[b, :n], cat[b, :n] = data.action[s:e], data.item[s:e], data.category[s:e]
        ts[b, :n], price[b, :n], valid[b, :n] = data.ts[s:e], data.price[s:e], True
        if data.next_ts is not None:
            after[b, :n] = data.next_ts[s:e]
    has_next = np.zeros((B, T), bool)
    has_next[:, :-1] = valid[:, 1:]
    gap = features.gaps(ts) if data.has_time else np.zeros((B, T))
    next_item = np.where(has_next, np.roll(item, -1, 1), 0)
    next_action = np.where(has_next, np.roll(action, -1, 1), IGNORE)
    churn = np.full((B, T), -1.0, np.float32)
    if data.has_time:
        H = cfg.churn_horizon_s
        # the time to the user's next event (not the input gap, which is measured from the newest
        # event and is 0 for a late one)
        if data.next_ts is None:
            after[:, :-1] = np.where(has_next[:, :-1], ts[:, 1:], np.nan)
        comes_back = ~np.isnan(after)
        next_gap = np.maximum(np.nan_to_num(after - ts), 0)
        # Label only positions observed for a whole horizon. Near the end, keeping those whose
        # next event happened to arrive in time (label 0) and dropping the rest would bias the
        # labels towards "stays"; so censor every one of them.
        observed = valid & ((data.end_ts - ts) >= H)
        churn = np.where(observed & comes_back, (next_gap > H).astype(np.float32), churn)
        churn = np.where(observed & ~comes_back, 1.0, churn).astype(np.float32)
    item_t = torch.from_numpy(item)
    window = features.windows(item_t, ts if data.has_time else np.zeros((B, T)), lens, cfg.window,
                              data.limits)
    x = features.encode(action, item, cat, np.where(valid, gap, 0.0), price, window)
    return Batch(x, torch.from_numpy(next_item), torch.from_numpy(next_action),
                 torch.from_numpy(churn), torch.from_numpy(valid), np.asarray(rows))


def batches(data: SeqData, cfg: GRUConfig, max_tokens: int, shuffle: bool,
            rng: np.random.Generator | None = None, rows: np.ndarray | None = None) -> Iterator[Batch]:
    """Length-bucketed batches of at most `max_tokens` padded positions each (of `rows` only, if
    given)."""
    lens = data.lengths()
    order = np.argsort(lens, kind="stable")
    order = order[lens[order] > 0]
    if rows is not None:
        order = order[np.isin(order, rows)]
    groups: list[list[int]] = []
    cur: list[int] = []
    for r in order:
        if cur and (len(cur) + 1) * lens[r] > max_tokens:
            groups.append(cur)
            cur = []
        cur.append(int(r))
    if cur:
        groups.append(cur)
    if shuffle:
        (rng or np.random.default_rng()).shuffle(groups)  # type: ignore[arg-type]
    for g in groups:
        yield make_batch(data, g, cfg)


def row_last_ts(data: SeqData) -> np.ndarray:
    """(S,) each row's last event time (an empty row reads the previous row's last event)."""
    return data.ts[np.maximum(data.offsets[1:] - 1, 0)]


def row_recency(data: SeqData) -> np.ndarray:
    """Each row's place from the oldest (0) to the newest (len - 1): by its last event's time, or
    by row order when the data has no time (sessions listed oldest first, as Diginetica's are)."""
    if not data.has_time:
        return np.arange(len(data))
    last = row_last_ts(data)
    place = np.empty(len(data), np.int64)
    place[np.argsort(last, kind="stable")] = np.arange(len(data))
    return place


def item_transitions(parts: SeqData | Sequence[SeqData], cfg: GRUConfig, reach: int = 1,
                     backward: float = 0.0, recency: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Each known item's `cfg.transition_k` most frequent neighbours within a row: (item_vocab,
    k) item indices and (item_vocab, k) probabilities (rows sum to 1; 0 for an item with no
    neighbour). An item `d` <= `reach` events after another counts 1/d as its successor and
    `backward`/d the other way round (items viewed together lead to each other both ways);
    repeats of the item itself, events without an item and hash buckets are left out (bucket
    indices move when a warm start grows the vocabulary). Ties go to the lower index (the more
    frequent item in a frequency-ordered vocabulary).

    `parts`: one SeqData or several, the oldest first. `recency` > 0 weighs each row by
    exp(-(rows newer than it) / (recency * rows)): what shoppers open together drifts, and the
    newest sessions say most about the next ones (0: every row counts the same)."""
    parts = [parts] if isinstance(parts, SeqData) else list(parts)
    n_known, k, vocab = cfg.n_items, cfg.transition_k, cfg.item_vocab
    n_rows = sum(len(p) for p in parts)
    src, dst, wt = [], [], []
    older = 0
    for data in parts:
        row_of = np.repeat(np.arange(len(data)), data.lengths())
        place = older + row_recency(data)
        older += len(data)
        row_w = np.exp((place - (n_rows - 1)) / (recency * n_rows)) if recency else np.ones(len(data))
        for d in range(1, reach + 1):
            a, b = data.item[:-d], data.item[d:]
            keep = ((row_of[:-d] == row_of[d:]) & (a >= 1) & (a <= n_known) & (b >= 1)
                    & (b <= n_known) & (a != b))
            w = row_w[row_of[:-d][keep]] / d
            src += [a[keep], b[keep]] if backward else [a[keep]]
            dst += [b[keep], a[keep]] if backward else [b[keep]]
            wt += [w, backward * w] if backward else [w]
    pair, inv = np.unique(np.concatenate(src) * vocab + np.concatenate(dst), return_inverse=True)
    weight = np.bincount(inv, weights=np.concatenate(wt), minlength=len(pair))
    a, b = pair // vocab, pair % vocab
    order = np.lexsort((b, -weight, a))  # by source, heaviest first, then lower index
    a, b, weight = a[order], b[order], weight[order]
    first = np.searchsorted(a, a)  # where each source's run starts
    top = np.arange(len(a)) - first < k
    a, b, weight = a[top], b[top], weight[top]
    slot = np.arange(len(a)) - np.searchsorted(a, a)
    items = np.zeros((vocab, k), np.int32)
    probs = np.zeros((vocab, k), np.float32)
    items[a, slot] = b
    probs[a, slot] = weight
    probs /= np.maximum(probs.sum(1, keepdims=True), 1e-30)
    return items, probs
