"""Pure scoring: (predictor, states, events) -> (new states, predictions).

A micro-batch is split into waves: a user's k-th event in the batch goes into wave k, so each
user's events are applied in order while all users of a wave share one `step()` on the device.
A user's hidden state comes from the device cache when it is current, else from the state
itself, else (a new model version) it is rebuilt from the user's window; a brand-new user
starts from zeros. No I/O: the agent reads and writes the table and sends the results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from .predictor import Predictor
from .records import Event
from .state import StateLimits, UserState, observe


@dataclass
class Prediction:
    event: Event
    model_version: str
    action_probs: np.ndarray  # (A,)
    churn_probability: float
    top_items: list[tuple[str, float]]  # (item_id, probability), best first
    replayed: bool


@dataclass
class BatchResult:
    predictions: list[Prediction]  # one per input event, in input order
    states: dict[str, UserState]  # the final state of every user in the batch
    stats: dict[str, int]


def waves(events: Sequence[Event]) -> list[list[int]]:
    """Indices of events grouped so wave k holds every user's k-th event of the batch."""
    out: list[list[int]] = []
    seen: dict[str, int] = {}
    for i, e in enumerate(events):
        k = seen.get(e.user_id, 0)
        seen[e.user_id] = k + 1
        if k == len(out):
            out.append([])
        out[k].append(i)
    return out


def _gather(p: Predictor, users: list[str], prev: list[UserState | None],
            stats: dict[str, int]) -> torch.Tensor:
    """(layers, B, H) hidden states before this wave's events."""
    m = p.model
    h = m.init_state(len(users), p.device)
    hit_pos, hit_slot, host_pos, host_rows, rebuild_pos = [], [], [], [], []
    for b, (u, st) in enumerate(zip(users, prev, strict=True)):
        if st is None or st.n_events == 0:
            continue
        if st.model_version == p.version and st.hidden is not None:
            slot = p.cache.lookup(u, st.n_events, p.version)
            if slot is not None:
                hit_pos.append(b)
                hit_slot.append(slot)
            else:
                host_pos.append(b)
                host_rows.append(st.hidden)
        else:
            rebuild_pos.append(b)
    if hit_pos:
        h[:, hit_pos] = p.cache.h[:, hit_slot]
    if host_pos:
        rows = torch.from_numpy(np.stack(host_rows)).view(len(host_pos), m.cfg.layers, m.cfg.hidden)
        h[:, host_pos] = rows.transpose(0, 1).to(p.device)
    if rebuild_pos:
        h[:, rebuild_pos] = p.rebuild([prev[b].window for b in rebuild_pos])  # type: ignore[union-attr]
        stats["rebuilt"] += len(rebuild_pos)
    return h


@torch.no_grad()
def score_batch(p: Predictor, events: Sequence[Event], states: dict[str, UserState | None],
                limits: StateLimits) -> BatchResult:
    cur: dict[str, UserState | None] = dict(states)
    preds: list[Prediction | None] = [None] * len(events)
    stats = {"rebuilt": 0, "replayed": 0, "late": 0, "waves": 0}
    actions_k = p.k
    ids = p.items.ids
    for wave in waves(events):
        stats["waves"] += 1
        evs = [events[i] for i in wave]
        users = [e.user_id for e in evs]
        prev = [cur.get(u) for u in users]
        observed = [observe(st, e, limits) for st, e in zip(prev, evs, strict=True)]
        h_prev = _gather(p, users, prev, stats)
        x = p.step_inputs([st.window for st, _ in observed], [ob.gap_s for _, ob in observed])
        out, rq, h_new = p.model.step(x, h_prev)
        probs = torch.softmax(out.action_logits, -1).cpu().numpy()
        churn = torch.sigmoid(out.churn_logit).cpu().numpy()
        top_v, top_i = p.model.top_items(out, rq, x.window, actions_k, p.not_items)
        top_v, top_i = top_v.cpu().tolist(), top_i.cpu().tolist()  # plain floats: cheap to serialise
        h_host = h_new.transpose(0, 1).reshape(len(evs), -1).cpu().numpy()
        keep_u, keep_n, keep_b = [], [], []
        for b, (i, (st, ob)) in enumerate(zip(wave, observed, strict=True)):
            preds[i] = Prediction(events[i], p.version, probs[b], float(churn[b]),
                                  list(zip([ids[j - 1] for j in top_i[b]], top_v[b], strict=True)),
                                  ob.replayed)
            if ob.replayed:  # already applied: predict, but never advance the state twice
                stats["replayed"] += 1
                continue
            stats["late"] += ob.late
            cur[users[b]] = replace(st, hidden=h_host[b].copy(), model_version=p.version)
            keep_u.append(users[b])
            keep_n.append(st.n_events)
            keep_b.append(b)
        if keep_b:
            p.cache.store(keep_u, keep_n, p.version, h_new[:, keep_b])
    batch_users = {e.user_id for e in events}
    final = {u: s for u, s in cur.items() if s is not None and u in batch_users}
    return BatchResult([q for q in preds if q is not None], final, stats)
