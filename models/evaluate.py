"""Score a trained model on held-out positions: `predict` (full forward; `step` gives the same
numbers, as tests/test_model.py proves) returns plain arrays for models.metrics; `step_metrics`
runs the stream's own path, event by event, and returns the metrics a retrain cycle compares."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .data import IGNORE, SeqData, Vocab, batches
from .datasets import events_to_seqdata
from .features import SERVING_DEFAULTS, WindowLimits
from .gru import ClickstreamGRU, Outputs
from .metrics import recall_mrr_at_k
from .train import run_incremental


@dataclass
class Predictions:
    action_probs: np.ndarray  # (Na, A)
    action_labels: np.ndarray  # (Na,)
    churn_probs: np.ndarray  # (Nc,)
    churn_labels: np.ndarray  # (Nc,)
    item_ranks: np.ndarray  # (Ni,) 1-based rank of the next item among known items
    action_at: np.ndarray  # (Na,) flat event index (into the SeqData arrays) of each prediction
    churn_at: np.ndarray  # (Nc,)


def _select(out: Outputs, idx: tuple) -> Outputs:
    return Outputs(out.action_logits[idx], out.churn_logit[idx], out.item_query[idx],
                   out.repeat_gate[idx])


@torch.no_grad()
def predict(model: ClickstreamGRU, data: SeqData, from_ts: float | None, n_known_items: int,
            device: torch.device | str = "cpu", batch_tokens: int = 8192,
            item_chunk: int = 1024) -> Predictions:
    model.eval()
    not_items = torch.ones(model.cfg.item_vocab, dtype=torch.bool, device=device)
    not_items[1:1 + n_known_items] = False
    acc: dict[str, list[np.ndarray]] = {k: [] for k in Predictions.__dataclass_fields__}
    for b in batches(data, model.cfg, batch_tokens, shuffle=False):
        sel = b.valid.clone()
        flat = data.offsets[b.rows][:, None] + np.arange(sel.shape[1])[None, :]  # (B, T)
        if from_ts is not None:
            ts = data.ts[np.minimum(flat, len(data.ts) - 1)]
            sel &= torch.from_numpy(ts >= from_ts)
        b = b.to(device)
        sel = sel.to(device)
        out, rq, _ = model(b.x)
        m = sel & (b.next_action != IGNORE)
        acc["action_probs"].append(torch.softmax(out.action_logits[m], -1).cpu().numpy())
        acc["action_labels"].append(b.next_action[m].cpu().numpy())
        acc["action_at"].append(flat[m.cpu().numpy()])
        m = sel & (b.churn >= 0)
        acc["churn_probs"].append(torch.sigmoid(out.churn_logit[m]).cpu().numpy())
        acc["churn_labels"].append(b.churn[m].cpu().numpy())
        acc["churn_at"].append(flat[m.cpu().numpy()])
        m = sel & (b.next_item >= 1) & (b.next_item <= n_known_items)
        idx = m.nonzero(as_tuple=True)
        for s in range(0, len(idx[0]), item_chunk):
            part = tuple(t[s:s + item_chunk] for t in idx)
            lp = model.item_log_probs(_select(out, part), rq[part], b.x.window[part])
            lp = lp.masked_fill(not_items, float("-inf"))
            score = lp.gather(1, b.next_item[part][:, None])
            acc["item_ranks"].append(((lp > score).sum(1) + 1).cpu().numpy())
    return Predictions(**{k: np.concatenate(v) if v else np.zeros(0) for k, v in acc.items()})


@torch.no_grad()
def step_metrics(model: ClickstreamGRU, items: Vocab, categories: Vocab,
                 events: Sequence[Mapping[str, Any]], from_ts: float, k: int = 20,
                 device: torch.device | str = "cpu", rows_per_batch: int = 512,
                 limits: WindowLimits = SERVING_DEFAULTS) -> dict[str, float]:
    """Score `model` the way the stream runs it: each user's events (time-ordered dicts) go
    through `step()` one at a time with the model's own vocabularies (unknown items hash into
    buckets, as in serving); the prediction made at every event with ts >= from_ts is scored
    against the user's next event. Items the model does not know count as misses (a model can
    only recommend what it knows), so models with different vocabularies are judged on the same
    positions. `limits`: the stream's window (models.features), so the judge sees what the worker
    sees. Returns item hit@k / MRR@k, action log loss and accuracy, and the counts."""
    data = events_to_seqdata(events, items, categories, limits=limits)
    lens = data.lengths()
    n_known = len(items)
    not_items = torch.ones(model.cfg.item_vocab, dtype=torch.bool, device=device)
    not_items[1:1 + n_known] = False
    nll: list[np.ndarray] = []
    correct: list[np.ndarray] = []
    ranks: list[np.ndarray] = []

    def collect(rows: np.ndarray, pos: np.ndarray, out: Outputs, rq: torch.Tensor,
                win: torch.Tensor) -> None:
        at = data.offsets[rows] + pos
        sel = np.nonzero((pos < lens[rows] - 1) & (data.ts[at] >= from_ts))[0]
        if not len(sel):
            return
        nxt = at[sel] + 1
        logp = torch.log_softmax(out.action_logits[torch.from_numpy(sel).to(device)], -1).cpu()
        label = torch.from_numpy(data.action[nxt])
        nll.append(-logp.gather(1, label[:, None]).squeeze(1).numpy())
        correct.append((logp.argmax(1) == label).numpy())
        target = data.item[nxt]
        has_item = target > 0
        known = has_item & (target <= n_known)
        r = np.full(int(has_item.sum()), np.inf)  # unknown to this model: a miss
        if known.any():
            s = torch.from_numpy(sel[known]).to(device)
            lp = model.item_log_probs(_select(out, (s,)), rq[s], win[s]).masked_fill(
                not_items, float("-inf"))
            tgt = torch.from_numpy(target[known]).to(device)
            score = lp.gather(1, tgt[:, None])
            r[known[has_item]] = ((lp > score).sum(1) + 1).cpu().numpy()
        ranks.append(r)

    order = np.argsort(lens, kind="stable")
    for s in range(0, len(order), rows_per_batch):
        run_incremental(model.to(device), data, order[s:s + rows_per_batch], collect, device)
    item_ranks = np.concatenate(ranks) if ranks else np.zeros(0)
    losses = np.concatenate(nll) if nll else np.zeros(0)
    hit, mrr = recall_mrr_at_k(item_ranks, k) if len(item_ranks) else (float("nan"), float("nan"))
    return {f"item_hit_at_{k}": hit, f"item_mrr_at_{k}": mrr,
            "action_log_loss": float(losses.mean()) if len(losses) else float("nan"),
            "action_accuracy": float(np.concatenate(correct).mean()) if correct else float("nan"),
            "n_item": int(len(item_ranks)), "n_item_unknown": int(np.isinf(item_ranks).sum()),
            "n_action": int(len(losses))}
