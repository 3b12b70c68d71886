"""Training recipes: from a time-ordered event stream to a trained, evaluated model.

The split is by time, never by user: train on events before the 70% time quantile, early-stop
on [70%, 85%), report on >= 85%. Later events of a user are scored with the user's earlier
events as context (they only warm the hidden state), exactly as the stream sees them.
Vocabularies come from the training part only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .data import SeqData, Vocab
from .datasets import build_vocabs, events_to_seqdata, sessions_to_seqdata
from .evaluate import Predictions, predict
from .features import SERVING_DEFAULTS, WindowLimits
from .gru import ClickstreamGRU, GRUConfig
from .metrics import binary_report, multiclass_report, recall_mrr_at_k
from .train import TrainConfig, fit, install_transitions, pick_device, validation_passes
from .warmstart import WarmStart


@dataclass
class Trained:
    model: ClickstreamGRU
    items: Vocab
    categories: Vocab
    report: dict[str, Any]
    test: Predictions
    split: dict[str, float]
    data: SeqData  # every event, encoded; `test` indexes into it


def time_split(ts: np.ndarray, train_q: float = 0.70, valid_q: float = 0.85) -> tuple[float, float]:
    return float(np.quantile(ts, train_q)), float(np.quantile(ts, valid_q))


def test_metrics(p: Predictions) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if len(p.action_labels):
        out["next_action"] = multiclass_report(p.action_probs, p.action_labels)
    if len(p.churn_labels) and 0 < p.churn_labels.mean() < 1:
        out["churn"] = binary_report(p.churn_probs, p.churn_labels)
    if len(p.item_ranks):
        r, m = recall_mrr_at_k(p.item_ranks, 20)
        out["next_item"] = {"recall@20": r, "mrr@20": m, "n": int(len(p.item_ranks))}
    return out


def train_on_events(events: Sequence[Mapping[str, Any]], cfg: GRUConfig, tcfg: TrainConfig,
                    device: str = "auto", min_item_count: int = 1,
                    progress: Callable[[dict[str, Any]], None] | None = None,
                    train_q: float = 0.70, valid_q: float = 0.85,
                    warm: WarmStart | None = None, limits: WindowLimits | None = None) -> Trained:
    """`events`: schema-v1 dicts in arrival order (as the stream reads them; usually sorted by
    time). `cfg.n_items`/`n_categories` are filled in. Sequences are built the way the stream
    applies them under `limits` (the service's window_events/window_seconds; see models.features):
    replays dropped, late events gap 0, windows trimmed, a new sequence after an idle reset.
    Default: the service's defaults, the time span raised to the churn horizon (a service that
    forgets users sooner cannot serve that horizon; configure it with at least as long a window).

    With `warm` (a champion's model and vocabularies) `cfg` is ignored: the challenger keeps the
    champion's architecture and every item it knew, adds the new items of the training part
    (see models.warmstart), and starts from the champion's weights."""
    ts = np.array([float(e["ts"]) for e in events])
    c1, c2 = time_split(ts, train_q, valid_q)
    init = None
    if warm is None:
        items, cats = build_vocabs((e for e in events if float(e["ts"]) < c1), cfg.item_buckets,
                                   cfg.category_buckets, min_item_count)
        cfg = replace(cfg, n_items=len(items), n_categories=len(cats))
    else:
        init, items, cats = warm.extended([e for e in events if float(e["ts"]) < c1],
                                          min_item_count)
        cfg = init.cfg
    if limits is None:
        limits = replace(SERVING_DEFAULTS, seconds=max(SERVING_DEFAULTS.seconds, cfg.churn_horizon_s))
    full = events_to_seqdata(events, items, cats, end_ts=float(ts.max()), limits=limits)
    dev = pick_device(device)
    model, report = fit(cfg, full.before(c1), full.before(c2), tcfg, device=str(dev),
                        valid_from_ts=c1, progress=progress, init=init)
    if tcfg.valid_passes:  # validation has chosen all it chooses; now the model learns from it
        report["validation_passes"] = validation_passes(model, full.before(c1), full.before(c2),
                                                        tcfg, dev, valid_from_ts=c1)
    if cfg.transition_k:  # its weight chosen, the table counts every event before the test part
        install_transitions(model, full.before(c2), tcfg)
    preds = predict(model, full, c2, len(items), dev)
    report["test"] = test_metrics(preds)
    split = {"train_before_ts": c1, "valid_before_ts": c2, "test_from_ts": c2,
             "end_ts": float(ts.max()), "events": len(events)}
    return Trained(model, items, cats, report, preds, split, full)


def train_on_sessions(sessions: list[list[str]], cfg: GRUConfig, tcfg: TrainConfig,
                      device: str = "auto", progress: Callable[[dict[str, Any]], None] | None = None,
                      valid_share: float = 0.05) -> tuple[ClickstreamGRU, Vocab, Vocab, dict[str, Any]]:
    """Item-only sessions (no actions, no timestamps: Diginetica): the next-item head alone; the
    last `valid_share` of the sessions pick the epoch. Returns (model, items, categories, report);
    the action and churn heads stay untrained."""
    items = Vocab.build((i for s in sessions for i in s), cfg.item_buckets)
    cats = Vocab((), cfg.category_buckets)
    cfg = replace(cfg, n_items=len(items))
    cut = int((1 - valid_share) * len(sessions))
    tcfg = replace(tcfg, w_action=0.0, w_churn=0.0)
    parts = sessions_to_seqdata(sessions[:cut], items), sessions_to_seqdata(sessions[cut:], items)
    model, report = fit(cfg, *parts, tcfg, device=device, progress=progress)
    if tcfg.valid_passes:  # validation has chosen all it chooses; now the model learns from it
        report["validation_passes"] = validation_passes(model, *parts, tcfg, pick_device(device))
    if cfg.transition_k:  # its weight chosen, the table counts the validation sessions too
        install_transitions(model, parts, tcfg)
    return model, items, cats, report
