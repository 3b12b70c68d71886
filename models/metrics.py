"""Offline metrics (pure numpy): ranking, classification, probability quality."""

from __future__ import annotations

import numpy as np


def recall_mrr_at_k(ranks: np.ndarray, k: int = 20) -> tuple[float, float]:
    """ranks: 1-based rank of the true item per row. Returns (Recall@k, MRR@k) as fractions."""
    ranks = np.asarray(ranks, dtype=np.float64)
    hit = ranks <= k
    return float(hit.mean()), float(np.where(hit, 1.0 / ranks, 0.0).mean())


def log_loss(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-12) -> float:
    """Multiclass (probs (N, C), labels (N,)) or binary (probs (N,), labels (N,) in {0,1})."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim == 1:
        p = np.clip(probs, eps, 1 - eps)
        return float(-(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean())
    p = np.clip(probs[np.arange(len(labels)), labels], eps, 1.0)
    return float(-np.log(p).mean())


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(probs).argmax(1) == np.asarray(labels)).mean())


def macro_f1(probs: np.ndarray, labels: np.ndarray, n_classes: int | None = None,
             prior: np.ndarray | None = None, weights: np.ndarray | None = None) -> float:
    """Mean F1 over the classes present in labels or predictions. Decision: argmax p(c); with
    `prior` the prior-corrected argmax p(c)/prior(c) (a rule that does not always answer the
    majority class); with `weights` argmax w(c) p(c) (see `fit_decision_weights`)."""
    p = np.asarray(probs, dtype=np.float64)
    if prior is not None:  # classes never seen in training (prior 0) are never chosen
        prior = np.asarray(prior, dtype=np.float64)
        p = np.where(prior > 0, p / np.where(prior > 0, prior, 1.0), -np.inf)
    if weights is not None:
        p = p * np.asarray(weights, dtype=np.float64)
    pred = p.argmax(1)
    labels = np.asarray(labels)
    classes = np.union1d(np.unique(labels), np.unique(pred)) if n_classes is None else np.arange(n_classes)
    f1s = []
    for c in classes:
        tp = np.sum((pred == c) & (labels == c))
        fp = np.sum((pred == c) & (labels != c))
        fn = np.sum((pred != c) & (labels == c))
        if tp + fp + fn == 0:
            continue
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else 0.0


def fit_decision_weights(probs: np.ndarray, labels: np.ndarray, rounds: int = 3) -> np.ndarray:
    """Per-class weights w for the decision argmax w(c) p(c) that maximise macro-F1 on held-out
    (validation) data: coordinate ascent over a log grid, the majority class fixed at 1. Fit on
    validation, applied unchanged to test: every method gets its own best rule, none sees test."""
    p = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    n = p.shape[1]
    w = np.ones(n)
    counts = np.bincount(labels, minlength=n)
    grid = np.exp(np.linspace(-2.0, 5.0, 36))
    best = macro_f1(p, labels, weights=w)
    for _ in range(rounds):
        improved = False
        for c in np.flatnonzero(counts)[np.argsort(-counts[counts > 0])][1:]:  # minority classes
            for g in grid:
                trial = w.copy()
                trial[c] = g
                score = macro_f1(p, labels, weights=trial)
                if score > best + 1e-12:
                    best, w, improved = score, trial, True
        if not improved:
            break
    return w


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney U with average ranks for ties."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[i:j + 1] = (i + j) / 2 + 1
        i = j + 1
    r = np.empty(len(s))
    r[order] = ranks
    return float((r[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pr_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision (area under the precision-recall curve, step-wise)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if labels.sum() == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    y = labels[order]
    tp = np.cumsum(y)
    precision = tp / np.arange(1, len(y) + 1)
    return float((precision * y).sum() / y.sum())


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Binary ECE with equal-width bins: sum_b |B|/N * |mean(p) - mean(y)|."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    idx = np.minimum((probs * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(probs[m].mean() - labels[m].mean())
    return float(ece)


def binary_report(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"auc": roc_auc(probs, labels), "pr_auc": pr_auc(probs, labels),
            "log_loss": log_loss(probs, labels), "ece": expected_calibration_error(probs, labels),
            "positive_rate": float(np.mean(labels)), "n": int(len(labels))}


def multiclass_report(probs: np.ndarray, labels: np.ndarray, prior: np.ndarray | None = None,
                      weights: np.ndarray | None = None) -> dict[str, float]:
    out = {"accuracy": accuracy(probs, labels), "macro_f1": macro_f1(probs, labels),
           "log_loss": log_loss(probs, labels), "n": int(len(labels))}
    if prior is not None:
        out["macro_f1_prior_corrected"] = macro_f1(probs, labels, prior=prior)
    if weights is not None:
        out["macro_f1_validation_tuned"] = macro_f1(probs, labels, weights=weights)
    return out
