"""fit(...) -> (model, report): multitask training with early stopping, and the two ways to run a
trained model over data (full-sequence forward, and event-by-event `step`).

Loss = W_ITEM * CE(next item) + W_ACTION * CE(next action) + W_CHURN * BCE(churn), each a mean
over the positions that have that label (datasets without actions or time simply contribute no
action/churn terms). Defaults weigh the item head highest because it has by far the most
classes to learn; the action and churn heads converge within the first epoch either way.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from operator import itemgetter
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .data import IGNORE, Batch, SeqData, batches, item_transitions, make_batch, row_last_ts, row_recency
from .gru import ClickstreamGRU, Events, GRUConfig, mixture_probs, sequence_profile


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch_tokens: int = 4096
    patience: int = 2  # epochs without validation improvement before stopping
    seed: int = 0
    w_item: float = 1.0
    w_action: float = 0.5
    w_churn: float = 0.5
    max_seconds: float | None = None  # wall-clock budget; stops after the epoch that crosses it
    grad_clip: float = 5.0
    select_on: str = "total"  # validation loss that early stopping watches: total|item|action|churn
    # > 0: train the item head with a sampled softmax over this many negatives per batch, drawn
    # from item popularity^0.75 (validation and evaluation always use the full softmax)
    sampled_negatives: int = 0
    # where the sampled softmax's negatives come from: "popularity" (K draws from popularity^0.75)
    # or "in_batch" (the batch's own next items, each once, as in two-tower retrieval training),
    # or "mixed" (both: the batch's items and K popularity draws, as in mixed negative sampling)
    negatives_from: str = "popularity"
    lr_decay: float = 1.0  # the learning rate is multiplied by this after every epoch
    # after training, shift the repeat gate's bias to the best validation MRR@20 under the full
    # distribution (`calibrate_repeat_gate`); a no-op without a repeat channel or validation data
    calibrate_gate: bool = True
    # a model with a transition table (GRUConfig.transition_k), built after training by
    # `item_transitions`: an item up to `transition_reach` events after another counts 1/distance
    # as its successor and `transition_backward`/distance as its predecessor
    transition_reach: int = 3
    transition_backward: float = 0.5
    # > 0: the table weighs each training row by its recency (`item_transitions`' `recency`)
    transition_recency: float = 0.0
    # > 0: after early stopping, one more pass over the newest `recent_fraction` of the training
    # rows (`models.data.row_recency`) at `recent_lr` with a fresh optimiser, before calibration:
    # what shoppers open drifts, and the newest sessions say most about the next ones
    recent_fraction: float = 0.0
    recent_lr: float = 1e-4
    # > 0: after calibration, this many passes over the validation part at `recent_lr`
    # (`validation_passes`): its rows are the newest the model can learn from before serving
    valid_passes: int = 0
    # train in bfloat16 mixed precision (torch.autocast; weights, optimiser state, validation and
    # serving stay float32): the sampled softmax's matrix products run at the CPU's bf16 rate
    # (AVX512-BF16 / AMX) or on a GPU's tensor cores. Diginetica default model on the 2-core
    # CPU: 135 ms per training batch against 180 in float32, the same mean loss to 4 decimals;
    # the full benchmark command level with float32 (54.99 / 20.35 against 54.98 / 20.35), its
    # epochs 8% faster but the whole run not (benchmarks/results/next_item_bf16.json)
    bf16: bool = False


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


@dataclass
class LossParts:
    item: torch.Tensor
    action: torch.Tensor
    churn: torch.Tensor
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class NegativeSampler:
    """Shared negatives for a sampled softmax, per batch: K draws from popularity^alpha, the
    batch's own next items, or both (`source`)."""

    q: torch.Tensor  # (V,) probability of drawing each index
    k: int
    source: str = "popularity"  # popularity | in_batch | mixed (see TrainConfig.negatives_from)
    unigram: torch.Tensor | None = None  # (V,) next-item frequencies (in-batch inclusion odds)

    @classmethod
    def from_data(cls, train: SeqData, vocab: int, k: int, alpha: float = 0.75,
                  device: torch.device | str = "cpu", source: str = "popularity") -> NegativeSampler:
        counts = np.bincount(train.item[train.item > 0], minlength=vocab)[:vocab].astype(np.float64)
        w = (counts + 1.0) ** alpha
        w[0] = 0.0  # never "no item"
        uni = torch.from_numpy(counts / max(counts.sum(), 1.0)).float().to(device)
        if source not in ("popularity", "in_batch", "mixed"):
            raise ValueError(f"unknown negatives source {source!r}")
        return cls(torch.from_numpy(w / w.sum()).float().to(device), k, source, uni)

    def negatives(self, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices (K',), log of the expected number of times each is drawn (K',)): the logQ
        correction. Popularity: K draws with replacement (j expected K q(j) times). In-batch:
        each distinct target of the batch once (j drawn with P(j among the N targets)). Mixed:
        both, so the expected count is the sum (an index in both parts is kept twice, which is
        what that expectation counts)."""
        parts = []
        if self.source != "popularity":
            parts.append(torch.unique(targets))
        if self.source != "in_batch":
            parts.append(torch.multinomial(self.q, self.k, replacement=True))
        idx = torch.cat(parts)
        expected = torch.zeros(len(idx), dtype=torch.float64, device=idx.device)
        if self.source != "popularity":
            assert self.unigram is not None
            p = self.unigram[idx].clamp_min(1e-12).double()
            expected += -torch.expm1(len(targets) * torch.log1p(-p))  # 1 - (1 - p)^N
        if self.source != "in_batch":
            expected += self.k * self.q[idx].double()
        return idx, torch.log(expected.clamp_min(1e-12)).float()


def batch_losses(model: ClickstreamGRU, b: Batch, mask: torch.Tensor | None = None,
                 sampler: NegativeSampler | None = None) -> LossParts:
    """Mean losses per head over labelled positions (restricted to `mask` when given)."""
    out, rq, _ = model(b.x)
    sel = b.valid if mask is None else (b.valid & mask)
    zero = out.churn_logit.sum() * 0
    m_item = sel & (b.next_item > 0)
    m_act = sel & (b.next_action != IGNORE)
    m_churn = sel & (b.churn >= 0)
    item = zero
    if m_item.any():
        idx = m_item.nonzero(as_tuple=True)
        sub = type(out)(out.action_logits[idx], out.churn_logit[idx], out.item_query[idx],
                        out.repeat_gate[idx])
        neg, neg_log_q = None, None
        if sampler is not None:
            neg, neg_log_q = sampler.negatives(b.next_item[idx])
        item = -model.item_target_log_prob(sub, rq[idx], b.x.window[idx], b.next_item[idx],
                                           neg, neg_log_q).mean()
    action = F.cross_entropy(out.action_logits[m_act], b.next_action[m_act]) if m_act.any() else zero
    churn = (F.binary_cross_entropy_with_logits(out.churn_logit[m_churn], b.churn[m_churn])
             if m_churn.any() else zero)
    return LossParts(item, action, churn, {"item": int(m_item.sum()), "action": int(m_act.sum()),
                                           "churn": int(m_churn.sum())})


def _mask_from(b: Batch, data: SeqData, from_ts: float | None,
               device: torch.device | str) -> torch.Tensor | None:
    """(B, T) on `device`: the batch's positions with ts >= from_ts (None: every position)."""
    if from_ts is None:
        return None
    ts = torch.zeros(b.valid.shape, dtype=torch.float64)
    for i, r in enumerate(b.rows):
        s, e = data.offsets[r], data.offsets[r + 1]
        ts[i, : e - s] = torch.from_numpy(data.ts[s:e])
    return (ts >= from_ts).to(device)


@torch.no_grad()
def evaluate_loss(model: ClickstreamGRU, data: SeqData, tcfg: TrainConfig, device: torch.device,
                  from_ts: float | None = None) -> dict[str, float]:
    """Mean per-head validation losses over positions with ts >= from_ts (all when None)."""
    model.eval()
    sums = {"item": 0.0, "action": 0.0, "churn": 0.0}
    counts = {"item": 0, "action": 0, "churn": 0}
    for b in batches(data, model.cfg, tcfg.batch_tokens, shuffle=False):
        mask = _mask_from(b, data, from_ts, device)
        b = b.to(device)
        parts = batch_losses(model, b, mask)
        for k in sums:
            sums[k] += float(getattr(parts, k)) * parts.counts[k]
            counts[k] += parts.counts[k]
    means = {k: sums[k] / counts[k] if counts[k] else 0.0 for k in sums}
    means["total"] = (tcfg.w_item * means["item"] + tcfg.w_action * means["action"]
                      + tcfg.w_churn * means["churn"])
    return means


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 1e-3, iters: int = 50) -> np.ndarray:
    """L2-regularised logistic regression by Newton's method (IRLS) on standardised columns.
    X (N, D) without an intercept column; returns (D + 1,) weights, the intercept first, for the
    unstandardised X."""
    mu, sd = X.mean(0), X.std(0)
    sd[sd == 0] = 1.0
    Z = np.column_stack([np.ones(len(X)), (X - mu) / sd])
    w = np.zeros(Z.shape[1])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-Z @ w))
        g = Z.T @ (p - y) / len(y) + l2 * w
        H = (Z * (p * (1 - p))[:, None]).T @ Z / len(y) + l2 * np.eye(len(w))
        step = np.linalg.solve(H, g)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    coef = w[1:] / sd
    return np.concatenate([[w[0] - (coef * mu).sum()], coef])


def init_output_priors(model: ClickstreamGRU, train: SeqData, batch_tokens: int = 4096) -> None:
    """Start the action, item and churn heads at the training label rates (add-one smoothed)
    instead of uniform: the first epochs then learn structure instead of the base rates, and a
    small dataset that stops early still ends calibrated. Labels as `make_batch` defines them."""
    cfg = model.cfg
    acts, items = np.ones(cfg.n_actions), np.ones(cfg.item_vocab)
    has_items, churned, labelled = False, 1.0, 2.0  # add-one: (churned + 1) / (labelled + 2)
    churn_X, churn_y = [], []  # the churn head's non-state inputs and labels (churn_profile)
    for b in batches(train, cfg, batch_tokens, shuffle=False):
        acts += np.bincount(b.next_action[b.next_action != IGNORE].numpy(), minlength=cfg.n_actions)
        nxt = b.next_item[b.next_item > 0].numpy()
        items += np.bincount(nxt, minlength=cfg.item_vocab)
        has_items |= len(nxt) > 0
        c = b.churn[b.churn >= 0].numpy()
        churned, labelled = churned + float(c.sum()), labelled + len(c)
        if cfg.churn_profile:
            m = b.churn >= 0
            profile = sequence_profile(b.x.action, b.x.log_gap, cfg.n_actions)  # rows start afresh
            churn_X.append(torch.cat([b.x.log_gap[m, None], profile[m].float(),
                                      F.one_hot(b.x.action[m], cfg.n_actions).float()], -1).numpy())
            churn_y.append(c)
    with torch.no_grad():
        model.action_head.bias.copy_(torch.from_numpy(np.log(acts / acts.sum())).float())
        if has_items:
            logp = np.log(items / items.sum())
            model.item_bias.copy_(torch.from_numpy(logp - logp.mean()).float())
        if labelled > 2.0:
            rate = churned / labelled
            model.churn_head.bias.fill_(float(np.log(rate / (1 - rate))))
        if churn_X and 0 < churned - 1.0 < labelled - 2.0:  # both labels seen
            # start at the recency/frequency regression on the same inputs (training labels only),
            # the state's weights at 0: the GRU learns what the profile does not already say
            w = fit_logistic(np.concatenate(churn_X).astype(np.float64), np.concatenate(churn_y))
            H = cfg.hidden
            model.churn_head.weight[0, :H].zero_()
            model.churn_head.weight[0, H:].copy_(torch.from_numpy(w[1:]).float())
            model.churn_head.bias.fill_(float(w[0]))


def fit(cfg: GRUConfig, train: SeqData, valid: SeqData | None, tcfg: TrainConfig,
        device: str = "auto", valid_from_ts: float | None = None,
        progress: Callable[[dict[str, Any]], None] | None = None,
        init: ClickstreamGRU | None = None) -> tuple[ClickstreamGRU, dict]:
    """Train from scratch, or from a copy of `init` (a warm start: its config must be `cfg`, and
    its output heads keep what they learned instead of starting at the label rates); early-stop
    on the validation loss; return the best model and a report.

    `valid` is scored at positions with ts >= valid_from_ts (the time-ordered validation part;
    the earlier events of the same users only warm the hidden state).
    """
    set_seed(tcfg.seed)
    dev = pick_device(device)
    if init is not None:
        if init.cfg != cfg:
            raise ValueError("warm start: the initial model's config differs from cfg")
        model = copy.deepcopy(init)
    else:
        model = ClickstreamGRU(cfg)
        init_output_priors(model, train, tcfg.batch_tokens)
    model = model.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    rng = np.random.default_rng(tcfg.seed)
    sampler = (NegativeSampler.from_data(train, cfg.item_vocab, tcfg.sampled_negatives, device=dev,
                                         source=tcfg.negatives_from)
               if tcfg.sampled_negatives else None)
    best, best_state, best_val, bad_epochs = math.inf, None, {}, 0
    history = []
    t0 = time.monotonic()
    n_batches = sum(1 for _ in batches(train, cfg, tcfg.batch_tokens, shuffle=False))

    def report_batch(epoch: int, i: int, loss: float) -> None:
        if progress and (i % 20 == 0 or i == n_batches - 1):
            progress({"epoch": epoch, "batch": i + 1, "batches": n_batches, "loss": loss,
                      "elapsed_s": time.monotonic() - t0})

    for epoch in range(1, tcfg.epochs + 1):
        running, seen = train_pass(model, train, opt, sampler, tcfg, rng, dev,
                                   on_batch=partial(report_batch, epoch))
        val = evaluate_loss(model, valid, tcfg, dev, valid_from_ts) if valid is not None else {}
        score = val.get(tcfg.select_on, running / max(seen, 1))
        history.append({"epoch": epoch, "train_loss": running / max(seen, 1), "valid": val,
                        "elapsed_s": time.monotonic() - t0})
        if progress:
            progress({"epoch": epoch, "done": True, **history[-1]})
        for group in opt.param_groups:
            group["lr"] *= tcfg.lr_decay
        if score < best - 1e-4:
            best, best_state, best_val, bad_epochs = score, copy.deepcopy(model.state_dict()), val, 0
        else:
            bad_epochs += 1
        if bad_epochs >= tcfg.patience:
            break
        if tcfg.max_seconds and time.monotonic() - t0 > tcfg.max_seconds:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    report = {"train_config": asdict(tcfg), "device": str(dev), "epochs_run": len(history),
              "warm_start": init is not None,
              "best_valid_loss": best, "history": history}
    if tcfg.recent_fraction:
        report["recent_pass"] = recent_pass(model, train, valid, sampler, tcfg, rng, dev,
                                            valid_from_ts, before=best_val)
    model.eval()
    if cfg.transition_k:  # the table from the training part; its weight stays 0 until calibrated
        install_transitions(model, train, tcfg)
    if tcfg.calibrate_gate and cfg.repeat_head and valid is not None:
        report["gate_calibration"] = calibrate_repeat_gate(model, valid, tcfg, dev, valid_from_ts)
    if cfg.transition_k and valid is not None:
        report["transition_calibration"] = calibrate_transitions(model, valid, tcfg, dev, valid_from_ts)
    report["train_seconds"] = time.monotonic() - t0
    return model, report


def train_pass(model: ClickstreamGRU, data: SeqData, opt: torch.optim.Optimizer,
               sampler: NegativeSampler | None, tcfg: TrainConfig, rng: np.random.Generator,
               dev: torch.device, rows: np.ndarray | None = None,
               on_batch: Callable[[int, float], None] | None = None,
               from_ts: float | None = None) -> tuple[float, int]:
    """One shuffled pass over `data` (its `rows` only, if given; the loss at positions with
    ts >= from_ts only, if given, the earlier ones warming the state): (summed loss, batches)."""
    model.train()
    running, seen = 0.0, 0
    for i, b in enumerate(batches(data, model.cfg, tcfg.batch_tokens, shuffle=True, rng=rng,
                                  rows=rows)):
        mask = _mask_from(b, data, from_ts, dev)
        b = b.to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=tcfg.bf16):
            p = batch_losses(model, b, mask, sampler=sampler)
            loss = tcfg.w_item * p.item + tcfg.w_action * p.action + tcfg.w_churn * p.churn
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        opt.step()
        running += loss.item()
        seen += 1
        if on_batch:
            on_batch(i, running / seen)
    return running, seen


def recent_pass(model: ClickstreamGRU, train: SeqData, valid: SeqData | None,
                sampler: NegativeSampler | None, tcfg: TrainConfig, rng: np.random.Generator,
                dev: torch.device, valid_from_ts: float | None,
                before: dict[str, float]) -> dict[str, Any]:
    """One pass over the newest `tcfg.recent_fraction` of the training rows at `tcfg.recent_lr`
    (a fresh Adam), from the early-stopped weights, whose validation loss is `before` (the best
    epoch's, already measured). Returns the rows, the pass's mean loss and the validation loss
    before and after (reported, not used to undo the pass: the pass is a fixed part of the
    recipe, its fraction and rate chosen once on validation ranking)."""
    place = row_recency(train)
    rows = np.nonzero(place >= (1.0 - tcfg.recent_fraction) * len(train))[0]
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.recent_lr, weight_decay=tcfg.weight_decay)
    t0 = time.monotonic()
    running, seen = train_pass(model, train, opt, sampler, tcfg, rng, dev, rows=rows)
    after = evaluate_loss(model, valid, tcfg, dev, valid_from_ts) if valid is not None else {}
    return {"rows": int(len(rows)), "lr": tcfg.recent_lr, "train_loss": running / max(seen, 1),
            "valid_before": before, "valid_after": after, "seconds": time.monotonic() - t0}


def install_transitions(model: ClickstreamGRU, parts: SeqData | Sequence[SeqData],
                        tcfg: TrainConfig) -> None:
    """(Re)build the model's transition table from `parts` (the oldest first), keeping its
    weight: after calibration the deployed table can count the validation rows too."""
    items, probs = item_transitions(parts, model.cfg, tcfg.transition_reach,
                                    tcfg.transition_backward, tcfg.transition_recency)
    model.set_transitions(torch.from_numpy(items), torch.from_numpy(probs),
                          float(model.trans_weight))


def validation_passes(model: ClickstreamGRU, train: SeqData, valid: SeqData, tcfg: TrainConfig,
                      device: torch.device | str, valid_from_ts: float | None = None) -> dict[str, Any]:
    """After calibration, `tcfg.valid_passes` shuffled passes over the validation part (its
    positions from `valid_from_ts`, as `fit` scores them) at `tcfg.recent_lr`, a fresh Adam, the
    negatives drawn as in training from `train`. Validation has made every choice it makes (the
    epoch, the gate's shift, the table's weight), and its rows are the newest the model can learn
    from before serving: what shoppers open drifts. The gate and the table's weight stay as
    chosen. The table is out of the loss meanwhile (its weight 0, then restored): rebuilt with
    these rows it holds their own transitions, and a GRU trained beside a table that knows the
    answer learns to lean on it (screened on Diginetica, passes over half the validation part
    scored on the other half: with the table in the loss MRR@20 fell by 0.13 to 0.41, without
    it it held)."""
    dev = torch.device(device)
    rows = None
    if valid_from_ts is not None:
        rows = np.nonzero((valid.lengths() > 0) & (row_last_ts(valid) >= valid_from_ts))[0]
    sampler = (NegativeSampler.from_data(train, model.cfg.item_vocab, tcfg.sampled_negatives,
                                         device=dev, source=tcfg.negatives_from)
               if tcfg.sampled_negatives else None)
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.recent_lr, weight_decay=tcfg.weight_decay)
    rng = np.random.default_rng(tcfg.seed)
    weight = float(model.trans_weight) if model.cfg.transition_k else 0.0
    losses = []
    t0 = time.monotonic()
    try:
        if model.cfg.transition_k:
            model.trans_weight.fill_(0.0)
        for _ in range(tcfg.valid_passes):
            running, seen = train_pass(model, valid, opt, sampler, tcfg, rng, dev, rows=rows,
                                       from_ts=valid_from_ts)
            losses.append(running / max(seen, 1))
    finally:
        if model.cfg.transition_k:
            model.trans_weight.fill_(weight)
        model.eval()
    return {"passes": tcfg.valid_passes, "lr": tcfg.recent_lr,
            "rows": int(len(valid) if rows is None else len(rows)), "train_loss": losses,
            "seconds": time.monotonic() - t0}


GATE_SHIFTS = tuple(s / 2 for s in range(-2, 9))  # -1.0 .. +4.0 in steps of 0.5
TRANSITION_WEIGHTS = (0.0, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
# mixes the explore softmax (..., V), the repeat attention (..., W), the gate's logit (...) and the
# window into the next-item distribution of one candidate setting (its index)
Mix = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def _validation_ranks(model: ClickstreamGRU, data: SeqData, tcfg: TrainConfig,
                      device: torch.device | str, from_ts: float | None, n: int, mix: Mix,
                      rows_per_chunk: int | None, k: int) -> tuple[list[float], list[float], int]:
    """P@k and MRR@k (fractions) of `n` candidate mixtures on the validation positions whose next
    item is known, ranking the full distribution over the known items as serving does, and the
    number of positions. Positions go through in chunks of `rows_per_chunk` (default: 2**24
    catalogue-wide probabilities, 64 MB each, whatever the catalogue's size)."""
    model.eval()
    if rows_per_chunk is None:
        rows_per_chunk = max(1, (1 << 24) // model.cfg.item_vocab)
    n_known = model.cfg.n_items
    hits = torch.zeros(n, dtype=torch.float64, device=device)
    rr = torch.zeros_like(hits)
    count = 0
    for b in batches(data, model.cfg, tcfg.batch_tokens, shuffle=False):
        mask = _mask_from(b, data, from_ts, device)
        b = b.to(device)
        sel = b.valid & (b.next_item >= 1) & (b.next_item <= n_known)
        if mask is not None:
            sel &= mask
        out, rq, _ = model(b.x)
        idx = sel.nonzero(as_tuple=True)
        for s in range(0, len(idx[0]), rows_per_chunk):
            part = tuple(t[s:s + rows_per_chunk] for t in idx)
            sub, target, window = out.map(itemgetter(part)), b.next_item[part], b.x.window[part]
            explore = torch.softmax(model.explore_logits(sub), dim=-1)
            att = model._repeat_attention(rq[part], window)
            z = torch.logit(sub.repeat_gate.clamp(1e-6, 1 - 1e-6))
            for j in range(n):
                p = mix(j, explore.clone(), att, z, window)[:, 1:1 + n_known]
                rank = (p > p.gather(-1, target.unsqueeze(-1) - 1)).sum(-1) + 1
                top = rank <= k
                hits[j] += top.sum()
                rr[j] += (top / rank).sum()
            count += len(target)
    if not count:
        return [], [], 0
    return (hits / count).tolist(), (rr / count).tolist(), count


def _choose(grid: tuple[float, ...], p: list[float], mrr: list[float], count: int, k: int,
            name: str) -> dict[str, Any]:
    """The grid value with the best MRR@k (ties: the smallest change), and the table."""
    best = max(range(len(grid)), key=lambda j: (round(mrr[j], 6), -abs(grid[j])))
    return {name: grid[best], "positions": count, "selected_on": f"validation MRR@{k}",
            f"by_{name}": {str(v): {f"P@{k}": round(100 * p[j], 2), f"MRR@{k}": round(100 * mrr[j], 2)}
                           for j, v in enumerate(grid)}}


@torch.no_grad()
def calibrate_repeat_gate(model: ClickstreamGRU, data: SeqData, tcfg: TrainConfig,
                          device: torch.device | str, from_ts: float | None = None,
                          rows_per_chunk: int | None = None, k: int = 20) -> dict[str, Any]:
    """Shift the repeat gate's logit (its bias, so the model stays one set of weights) by the
    value in GATE_SHIFTS with the best validation MRR@k, ranking the full next-item distribution
    over the known items as serving does. Training's likelihood is set by the many targets far
    down the list; the order at the top is set by how the window's items compare with the best
    catalogue items, and there the trained gate trusts the window too little (Diginetica, 60k
    training sessions: the likelihood-optimal shift is +0.25, the test MRR@20 rises by 0.45 from
    a +1.5 shift with P@20 level). Returns the shift and validation P@k/MRR@k per shift."""
    def mix(j: int, explore: torch.Tensor, att: torch.Tensor, z: torch.Tensor,
            window: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(z + GATE_SHIFTS[j]).unsqueeze(-1)
        return mixture_probs(model.mix_transitions(explore, window), att * g, window)

    p, mrr, count = _validation_ranks(model, data, tcfg, device, from_ts, len(GATE_SHIFTS), mix,
                                      rows_per_chunk, k)
    if not count:
        return {"shift": 0.0, "positions": 0}
    out = _choose(GATE_SHIFTS, p, mrr, count, k, "shift")
    model.gate.bias.add_(out["shift"])
    return out


@torch.no_grad()
def calibrate_transitions(model: ClickstreamGRU, data: SeqData, tcfg: TrainConfig,
                          device: torch.device | str, from_ts: float | None = None,
                          rows_per_chunk: int | None = None, k: int = 20) -> dict[str, Any]:
    """Set the transition table's weight in the explore distribution to the value in
    TRANSITION_WEIGHTS with the best validation MRR@k (ranked as `calibrate_repeat_gate` ranks,
    with the gate as it stands). The table is not trained with the GRU, so its weight is chosen
    where it is used: at the top of the ranking. Returns the weight and P@k/MRR@k per weight."""
    def mix(j: int, explore: torch.Tensor, att: torch.Tensor, z: torch.Tensor,
            window: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(z).unsqueeze(-1)
        return mixture_probs(model.mix_transitions(explore, window, TRANSITION_WEIGHTS[j]), att * g, window)

    p, mrr, count = _validation_ranks(model, data, tcfg, device, from_ts, len(TRANSITION_WEIGHTS),
                                      mix, rows_per_chunk, k)
    if not count:
        return {"weight": 0.0, "positions": 0}
    out = _choose(TRANSITION_WEIGHTS, p, mrr, count, k, "weight")
    model.trans_weight.fill_(out["weight"])
    return out


# --- running a trained model ----------------------------------------------------------------

def events_at(x: Events, idx: torch.Tensor, t: int) -> Events:
    """Step inputs (B,) at position t of the rows `idx` (B,) of sequence inputs x (R, T)."""
    return Events(**{f.name: getattr(x, f.name)[idx, t] for f in fields(x)})


@torch.no_grad()
def run_incremental(model: ClickstreamGRU, data: SeqData, rows: np.ndarray,
                    collect: Callable[[np.ndarray, np.ndarray, Any, torch.Tensor, torch.Tensor], None],
                    device: torch.device | str = "cpu") -> None:
    """Feed rows event by event through `model.step` (state carried between steps, exactly as
    the stream does). After each step, `collect(rows, positions, outputs, repeat_query, window)`
    is called for the rows that had an event at that step. The inputs are training's and the
    stream's (models.features through make_batch: the gap from the newest earlier event, windows
    trimmed by count and time under `data.limits`; the profile, for a churn_profile model, as
    forward derives it: rows start from a fresh state, as the stream's do after an idle reset)."""
    model.eval()
    rows = np.asarray(rows)
    if not len(rows):
        return
    lens = data.lengths()[rows]
    x = make_batch(data, rows.tolist(), model.cfg).x
    if model.cfg.churn_profile:
        x = replace(x, profile=sequence_profile(x.action, x.log_gap, model.cfg.n_actions))
    x = x.to(device)
    h = model.init_state(len(rows), device)
    for t in range(int(lens.max())):
        active = np.nonzero(lens > t)[0]
        act_t = torch.from_numpy(active).to(device)
        xt = events_at(x, act_t, t)
        out, rq, h_new = model.step(xt, h[:, act_t])
        h[:, act_t] = h_new
        collect(rows[active], np.full(len(active), t), out, rq, xt.window)
