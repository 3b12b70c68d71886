"""Score a trained model on held-out positions (full forward; `step` gives the same numbers, as
tests/test_model.py proves). Returns plain arrays for models.metrics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .data import IGNORE, SeqData, batches
from .gru import ClickstreamGRU, Outputs


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
