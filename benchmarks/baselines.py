"""Simple, honest baselines computed on exactly the positions the GRU is scored on."""

from __future__ import annotations

import numpy as np

from models.data import SeqData
from models.train import fit_logistic as models_fit_logistic

GAP_EDGES = np.array([10.0, 60.0, 300.0, 1800.0])  # seconds: <10s, <1m, <5m, <30m, longer


def position_features(data: SeqData) -> dict[str, np.ndarray]:
    """Per flat event: action, gap bucket (0 = first event), next action (-1 none), the next
    event's time, and recency/frequency features for the logistic-regression baseline."""
    n = len(data.ts)
    row = np.repeat(np.arange(len(data)), data.lengths())
    first = np.zeros(n, bool)
    first[data.offsets[:-1][data.lengths() > 0]] = True
    last = np.zeros(n, bool)
    last[data.offsets[1:][data.lengths() > 0] - 1] = True
    gap = np.where(first, 0.0, data.ts - np.roll(data.ts, 1))
    bucket = np.where(first, 0, 1 + np.searchsorted(GAP_EDGES, gap, side="right"))
    next_action = np.where(last, -1, np.roll(data.action, -1))
    pos = np.arange(n) - data.offsets[row]
    start = data.ts[data.offsets[row]]
    sessions = np.zeros(n)
    new_session = (~first) & (gap > 1800)
    for r in range(len(data)):  # cumulative sessions per user
        s, e = data.offsets[r], data.offsets[r + 1]
        sessions[s:e] = 1 + np.cumsum(new_session[s:e])
    return {"action": data.action, "bucket": bucket, "next_action": next_action, "gap": gap,
            "count": pos + 1.0, "age": data.ts - start, "sessions": sessions}


def rf_design(f: dict[str, np.ndarray], n_actions: int = 6) -> np.ndarray:
    """Recency/frequency features (+ the current action) for logistic regression."""
    onehot = np.eye(n_actions)[f["action"]]
    cols = [np.log1p(f["gap"]), np.log1p(f["count"]), np.log1p(f["sessions"]),
            np.log1p(f["age"]), np.log1p(f["count"]) / np.log1p(f["age"] + 1.0)]
    return np.column_stack([np.ones(len(f["gap"])), *cols, onehot[:, 1:]])


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 1e-3, iters: int = 50) -> np.ndarray:
    """L2-regularised logistic regression by IRLS; X's first column is the intercept's (ones).
    The same fit that starts the GRU's churn head (models.train.fit_logistic)."""
    return models_fit_logistic(X[:, 1:], y, l2, iters)


def predict_logistic(w: np.ndarray, X: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-X @ w))


def action_markov(actions: np.ndarray, buckets: np.ndarray, nxt: np.ndarray, n_actions: int = 6,
                  n_buckets: int = 6, alpha: float = 1.0) -> np.ndarray:
    """P(next action | action, gap bucket) with add-alpha smoothing: (A, n_buckets, A)."""
    counts = np.full((n_actions, n_buckets, n_actions), alpha)
    np.add.at(counts, (actions, buckets, nxt), 1.0)
    return counts / counts.sum(-1, keepdims=True)
