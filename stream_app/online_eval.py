"""Online evaluation: every published prediction scored against what its user did next.

Pure numpy, no I/O. A user's state keeps a compact copy of the prediction that followed their
newest event (`Kept`: model version, event time, action probabilities as float16, churn
probability, the published top-K items as 32-bit hashes of their ids). When the user's next
event arrives, the pair (kept prediction, next event) is scored:

- action: log loss of the next action under the predicted distribution, and whether the argmax
  was right (kind="action"; every next event);
- item: whether the next event's item is in the published top-K, and 1/rank (0 when absent)
  (kind="item"; only next events that name an item);
- churn: the next event came more than the model's churn horizon after the predicted one =
  churned, else returned (the training label's definition, models/data.py); log loss and a
  calibration bin (kind="churn"). A user expired by the idle sweep is scored as churned when the
  horizon has passed in their partition's event time, else left unscored (censored).

Item ids are kept as hashes (crc32 of the UTF-8 id) because vocabulary indices belong to one model
version, and the next event may be scored after a swap; a false hit needs a 32-bit collision
between the next item and one of K published ids (about K / 4e9).

Scoring happens once per prediction: replayed events are not applied, so they neither score nor
replace the kept prediction. Totals are per model version: the version that made the prediction.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

BINS = 10  # churn calibration bins: [0, 0.1), ..., [0.9, 1]
_EPS = 1e-7  # probabilities are clipped away from 0 and 1 (float16 copies can round to 0)


def item_hash(item_id: str) -> int:
    return zlib.crc32(item_id.encode())


def item_hashes(ids: Sequence[str]) -> np.ndarray:
    """(n,) uint32: the hash of each id, in vocabulary order (computed once per model version)."""
    return np.fromiter((zlib.crc32(i.encode()) for i in ids), np.uint32, len(ids))


@dataclass(frozen=True, eq=False)
class Kept:
    """The prediction that followed a user's newest applied event."""
    version: str
    ts: float  # event time of the event it followed
    action_probs: np.ndarray  # (A,) float16
    churn: float
    items: np.ndarray  # (K,) uint32 hashes of the published top-K ids, best first


@dataclass
class Pairs:
    """N predictions, each with the event that followed it (same user, arrival order)."""
    versions: list[str]
    pred_ts: np.ndarray  # (N,) float64
    action_probs: np.ndarray  # (N, A) float32
    churn: np.ndarray  # (N,) float32
    items: np.ndarray  # (N, K) uint32, padded
    n_items: np.ndarray  # (N,) valid entries of each `items` row
    next_ts: np.ndarray  # (N,)
    next_action: np.ndarray  # (N,) int
    next_item: np.ndarray  # (N,) uint32
    has_item: np.ndarray  # (N,) bool

    def __len__(self) -> int:
        return len(self.versions)


@dataclass
class Totals:
    """Sums for one model version (what the Prometheus counters add)."""
    action_scored: int = 0
    action_correct: int = 0
    action_log_loss: float = 0.0
    item_scored: int = 0
    item_hits: int = 0
    item_reciprocal_rank: float = 0.0
    churn_scored: int = 0
    churn_log_loss: float = 0.0
    # [bin, outcome]: outcome 0 = returned, 1 = churned
    calibration: np.ndarray = field(default_factory=lambda: np.zeros((BINS, 2), np.int64))


def stack_kept(kept: Sequence[Kept]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray,
                                              np.ndarray, np.ndarray]:
    """(versions, ts, action probs, churn, padded item hashes, item counts) of kept predictions."""
    n = len(kept)
    k = max((len(x.items) for x in kept), default=0)
    items = np.zeros((n, k), np.uint32)
    n_items = np.zeros(n, np.int64)
    for r, x in enumerate(kept):
        items[r, :len(x.items)] = x.items
        n_items[r] = len(x.items)
    a = max((len(x.action_probs) for x in kept), default=0)
    probs = np.zeros((n, a), np.float32)
    for r, x in enumerate(kept):
        probs[r, :len(x.action_probs)] = x.action_probs
    return ([x.version for x in kept], np.array([x.ts for x in kept], np.float64), probs,
            np.array([x.churn for x in kept], np.float32), items, n_items)


def _churn_loss(p: np.ndarray, churned: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), _EPS, 1 - _EPS)
    return -np.where(churned, np.log(p), np.log1p(-p))


def _bins(p: np.ndarray) -> np.ndarray:
    return np.minimum((np.clip(p, 0, 1) * BINS).astype(np.int64), BINS - 1)


def _group(versions: Sequence[str]) -> list[tuple[str, np.ndarray | slice]]:
    first = versions[0] if versions else ""
    if all(v == first for v in versions):  # the usual case: one version in service
        return [(first, slice(None))] if versions else []
    arr = np.array(versions, dtype=object)
    return [(v, np.flatnonzero(arr == v)) for v in dict.fromkeys(versions)]


def evaluate(pairs: Pairs | None, horizon_s: float) -> dict[str, Totals]:
    """Score each prediction against the event that followed it; totals per model version."""
    if pairs is None or not len(pairs):
        return {}
    n = len(pairs)
    rows = np.arange(n)
    p_next = np.clip(pairs.action_probs[rows, pairs.next_action].astype(np.float64), _EPS, 1.0)
    a_loss = -np.log(p_next)
    a_ok = pairs.action_probs.argmax(1) == pairs.next_action
    k = pairs.items.shape[1]
    match = (pairs.items == pairs.next_item[:, None]) & (np.arange(k)[None, :] < pairs.n_items[:, None])
    match &= pairs.has_item[:, None]
    hit = match.any(1)
    rr = np.where(hit, 1.0 / (match.argmax(1) + 1), 0.0)
    churned = (pairs.next_ts - pairs.pred_ts) > horizon_s
    c_loss = _churn_loss(pairs.churn, churned)
    bins = _bins(pairs.churn)
    out: dict[str, Totals] = {}
    for version, sel in _group(pairs.versions):
        t = out[version] = Totals()
        has = pairs.has_item[sel]
        t.action_scored = t.churn_scored = int(a_ok[sel].size)
        t.action_correct = int(a_ok[sel].sum())
        t.action_log_loss = float(a_loss[sel].sum())
        t.item_scored = int(has.sum())
        t.item_hits = int(hit[sel].sum())
        t.item_reciprocal_rank = float(rr[sel].sum())
        t.churn_log_loss = float(c_loss[sel].sum())
        np.add.at(t.calibration, (bins[sel], churned[sel].astype(np.int64)), 1)
    return out


def evaluate_expired(kept: Sequence[Kept], clock: float, horizon_s: float) -> dict[str, Totals]:
    """Users deleted by the idle sweep at event time `clock`: their last prediction is scored as
    churned when the horizon has passed since it, else not at all (the outcome is unknown)."""
    done = [x for x in kept if clock - x.ts >= horizon_s]
    if not done:
        return {}
    versions, _, _, churn, _, _ = stack_kept(done)
    loss = _churn_loss(churn, np.ones(len(done), bool))
    bins = _bins(churn)
    out: dict[str, Totals] = {}
    for version, sel in _group(versions):
        t = out[version] = Totals()
        t.churn_scored = int(loss[sel].size)
        t.churn_log_loss = float(loss[sel].sum())
        t.calibration[:, 1] = np.bincount(bins[sel], minlength=BINS)
    return out
