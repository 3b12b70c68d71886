"""Shared test helpers: a small trained model registry, and the offline reference predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from clickstream_tools.sources import simulated_events
from models.checkpoint import load_version, save_version
from models.data import from_sequences, make_batch
from models.datasets import encode_event
from models.features import SERVING_DEFAULTS, WindowLimits
from models.gru import GRUConfig
from models.recipes import train_on_events
from models.train import TrainConfig


def make_registry(path: Path, users: int = 200, events: int = 6000, seed: int = 3) -> str:
    evs, _ = simulated_events(users, events, seed=seed)
    cfg = GRUConfig(n_items=0, n_categories=0, emb_dim=24, hidden=32, window=20, item_buckets=32,
                    category_buckets=8, repeat_flag=True, gap_buckets=True)
    tr = train_on_events(evs, cfg, TrainConfig(epochs=1, batch_tokens=2048), device="cpu")
    return save_version(path, tr.model, tr.items, tr.categories, {"source": "test"}, {})


@torch.no_grad()
def offline_predictions(registry: Path, events: list[dict], version: str | None = None,
                        top_k: int = 10, limits: WindowLimits = SERVING_DEFAULTS,
                        ) -> dict[str, tuple[np.ndarray, float, np.ndarray]]:
    """event_id -> (action probs, churn probability, top-k item probabilities) from one full forward pass
    over each user's whole sequence: the reference the stream must match (a worker keeping
    `limits`: its CLICKSTREAM_WINDOW_EVENTS/_SECONDS)."""
    lm = load_version(registry, version)
    model = lm.model
    by_user: dict[str, list[dict]] = {}
    for e in events:
        by_user.setdefault(e["user_id"], []).append(e)
    users = list(by_user)
    data = from_sequences([[encode_event(e, lm.items, lm.categories) for e in by_user[u]]
                           for u in users], has_time=True, limits=limits)
    b = make_batch(data, list(range(len(users))), model.cfg)
    out, rq, _ = model(b.x)
    probs = torch.softmax(out.action_logits, -1).numpy()
    churn = torch.sigmoid(out.churn_logit).numpy()
    lp = model.item_log_probs(out, rq, b.x.window)
    mask = torch.ones(model.cfg.item_vocab, dtype=torch.bool)
    mask[1:1 + len(lm.items)] = False
    top = lp.masked_fill(mask, float("-inf")).topk(min(top_k, len(lm.items)), -1).values.exp().numpy()
    result = {}
    for r, u in enumerate(users):
        for t, e in enumerate(by_user[u]):
            result[e["event_id"]] = (probs[r, t], float(churn[r, t]), top[r, t])
    return result
