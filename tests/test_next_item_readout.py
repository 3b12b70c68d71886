"""The next-item readout options (window attention, the newest item in the query, cosine scoring,
no repeat channel, the gate's window statistics, a transition table, in-batch and mixed
negatives) keep the model's contracts: step == forward, the training loss path equals the full
distribution, serving's top-K is the top of that distribution; the gate's calibration ranks as
evaluation does."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from models.data import from_sequences, make_batch
from models.evaluate import predict
from models.gru import ClickstreamGRU
from models.metrics import recall_mrr_at_k
from models.train import (
    GATE_SHIFTS,
    NegativeSampler,
    TrainConfig,
    batch_losses,
    calibrate_repeat_gate,
    fit,
    run_incremental,
)

from .test_model import CFG, random_data
from .test_transitions import install_random_table

VARIANTS = {
    "attention+cosine": replace(CFG, window_attention=True, cosine=True, cosine_scale=12.0),
    "attention": replace(CFG, window_attention=True),
    "attention+newest item": replace(CFG, window_attention=True, last_item_readout=True),
    "cosine, no repeat": replace(CFG, cosine=True, repeat_head=False),
    "attention+newest item+gate statistics": replace(CFG, window_attention=True, last_item_readout=True,
                                                     gate_window_stats=True),
    # with a random neighbour table installed at weight 0.3 (see _model)
    "attention+newest item+transition table": replace(CFG, window_attention=True, last_item_readout=True,
                                                      transition_k=3),
    "attention+newest item+transition table over the window": replace(
        CFG, window_attention=True, last_item_readout=True, transition_k=3, transition_decay=0.5),
}


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    model = ClickstreamGRU(cfg).eval()
    return install_random_table(model, seed) if cfg.transition_k else model


@pytest.mark.parametrize("name", list(VARIANTS))
def test_step_equals_forward_and_loss_path_equals_full_distribution(name):
    cfg = VARIANTS[name]
    model = _model(cfg)
    data = random_data(seed=1)
    b = make_batch(data, list(range(len(data))), cfg)
    with torch.no_grad():
        out, rq, _ = model(b.x)
        full = model.item_log_probs(out, rq, b.x.window)
        target = torch.randint(1, cfg.item_vocab, b.x.item.shape)
        fast = model.item_target_log_prob(out, rq, b.x.window, target)
    torch.testing.assert_close(fast, full.gather(-1, target.unsqueeze(-1)).squeeze(-1),
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(full.exp().sum(-1), torch.ones_like(fast), atol=1e-4, rtol=1e-4)
    got = {}

    def collect(rows, pos, o, q, win):
        lp = model.item_log_probs(o, q, win)
        for i, (r, t) in enumerate(zip(rows, pos, strict=True)):
            got[(int(r), int(t))] = lp[i]

    run_incremental(model, data, np.arange(len(data)), collect, "cpu")
    assert len(got) == int(b.valid.sum())
    for (r, t), lp in got.items():
        torch.testing.assert_close(lp, full[r, t], atol=1e-5, rtol=1e-5)
    if not cfg.repeat_head:
        assert float(out.repeat_gate.abs().max()) == 0.0


def test_cosine_scores_are_bounded_and_the_cached_table_follows_the_weights():
    cfg = VARIANTS["attention+cosine"]
    model = _model(cfg)
    b = make_batch(random_data(seed=2), list(range(12)), cfg)
    with torch.no_grad():
        model.item_bias.zero_()
        out, _, _ = model(b.x)
        logits = model.explore_logits(out)
        assert float(logits.abs().max()) <= cfg.cosine_scale + 1e-4
        model.item_emb.weight.mul_(3.0).add_(0.1)  # an optimiser step or a weight swap
        again = model.explore_logits(out)
        ref = out.item_query @ torch.nn.functional.normalize(model.item_emb.weight, dim=-1).t()
    torch.testing.assert_close(again, ref, atol=1e-5, rtol=1e-5)


def test_sampled_softmax_with_cosine_is_exact_when_every_item_is_sampled_once():
    cfg = VARIANTS["attention+cosine"]
    model = _model(cfg, seed=4)
    b = make_batch(random_data(seed=4), list(range(12)), cfg)
    with torch.no_grad():
        out, rq, _ = model(b.x)
        target = torch.randint(1, cfg.item_vocab, b.x.item.shape)
        full = model.item_target_log_prob(out, rq, b.x.window, target)
        every = torch.arange(cfg.item_vocab)
        sampled = model.item_target_log_prob(out, rq, b.x.window, target, every,
                                             torch.zeros(cfg.item_vocab))
    torch.testing.assert_close(sampled, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("source, k", [("in_batch", 1), ("mixed", 50), ("popularity", 50)])
def test_negatives_carry_the_expected_number_of_draws_as_their_log_q(source, k):
    """In-batch: each distinct target once, drawn with P(among the N targets); popularity: K
    draws, j expected K q(j) times; mixed: both parts, the expected counts summed. The loss
    trains through them."""
    cfg = VARIANTS["attention+cosine"]
    data = random_data(seed=5, n=30)
    sampler = NegativeSampler.from_data(data, cfg.item_vocab, k, source=source)
    targets = torch.tensor([3, 3, 7, 9])
    idx, log_q = sampler.negatives(targets)
    batch_part = [3, 7, 9] if source != "popularity" else []
    assert idx[:len(batch_part)].tolist() == batch_part
    assert len(idx) == len(batch_part) + (k if source != "in_batch" else 0)
    p = sampler.unigram[idx].double().clamp_min(1e-12)
    expected = torch.zeros_like(p)
    if source != "popularity":
        expected += 1 - (1 - p) ** 4
    if source != "in_batch":
        expected += k * sampler.q[idx].double()
    torch.testing.assert_close(log_q.double(), torch.log(expected), atol=1e-5, rtol=1e-4)
    model = ClickstreamGRU(cfg).train()
    b = make_batch(data, list(range(len(data))), cfg)
    loss = batch_losses(model, b, sampler=sampler).item
    loss.backward()
    assert torch.isfinite(loss) and model.item_emb.weight.grad is not None


def test_an_unknown_negatives_source_is_refused():
    with pytest.raises(ValueError):
        NegativeSampler.from_data(random_data(seed=5, n=30), 100, 50, source="uniform")


def test_window_stats_by_hand():
    from models.gru import GATE_STATS_DIM, window_stats

    window = torch.tensor([[0, 0, 3, 5, 3, 7],   # newest 7, seen once; 3 repeats
                           [0, 0, 0, 5, 3, 3],   # newest 3, already there
                           [0, 0, 0, 0, 0, 4],   # first item
                           [0, 0, 0, 0, 0, 0]])  # nothing yet (a search first)
    item = torch.tensor([7, 3, 4, 0])
    got = window_stats(window, item)
    log1p = math.log1p
    want = torch.tensor([[log1p(4), 3 / 4, log1p(1), 0.0, 1 / 4],
                         [log1p(3), 2 / 3, log1p(1), 1.0, 2 / 3],
                         [log1p(1), 1.0, 0.0, 0.0, 1.0],
                         [0.0, 0.0, 0.0, 0.0, 0.0]])
    assert got.shape == (4, GATE_STATS_DIM)
    torch.testing.assert_close(got, want)
    # (B, T, W) sequences give the same numbers position by position
    torch.testing.assert_close(window_stats(window.unsqueeze(0), item.unsqueeze(0))[0], want)


def _repeat_heavy_data(seed: int, n: int = 40):
    """Sessions that often return to an item seen a few events before."""
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(n):
        seen: list[int] = []
        events = []
        for t in range(int(rng.integers(2, 12))):
            item = (int(rng.choice(seen)) if seen and rng.random() < 0.4
                    else int(rng.integers(1, CFG.n_items + 1)))
            seen.append(item)
            events.append((0, item, 0, 1.7e9 + 10.0 * t, math.nan))
        seqs.append(events)
    return from_sequences(seqs, has_time=True)


def test_gate_calibration_ranks_as_predict_does_and_keeps_the_best_validation_mrr():
    cfg = replace(CFG, window_attention=True, last_item_readout=True, gate_window_stats=True)
    model = _model(cfg, seed=3)
    data = _repeat_heavy_data(seed=5)
    probe = copy.deepcopy(model)
    before = model.gate.bias.detach().clone()
    got = calibrate_repeat_gate(model, data, TrainConfig(batch_tokens=64), "cpu", rows_per_chunk=7)
    assert got["positions"] > 100
    for shift, row in got["by_shift"].items():
        shifted = copy.deepcopy(probe)
        with torch.no_grad():
            shifted.gate.bias += float(shift)
        p, r = recall_mrr_at_k(predict(shifted, data, None, cfg.n_items).item_ranks, 20)
        assert row == {"P@20": round(100 * p, 2), "MRR@20": round(100 * r, 2)}, shift
    mrr = [row["MRR@20"] for row in got["by_shift"].values()]
    assert len(set(mrr)) > 1  # the shift matters on this data
    assert got["by_shift"][str(got["shift"])]["MRR@20"] == max(mrr)
    torch.testing.assert_close(model.gate.bias.detach(), before + got["shift"])


def test_fit_calibrates_the_gate_only_when_asked_and_when_there_is_one():
    data = _repeat_heavy_data(seed=6)
    tcfg = TrainConfig(epochs=1, batch_tokens=64, w_action=0.0, w_churn=0.0)
    _, report = fit(CFG, data, data, tcfg, device="cpu")
    assert report["gate_calibration"]["shift"] in GATE_SHIFTS
    _, report = fit(CFG, data, data, replace(tcfg, calibrate_gate=False), device="cpu")
    assert "gate_calibration" not in report
    _, report = fit(replace(CFG, repeat_head=False), data, data, tcfg, device="cpu")
    assert "gate_calibration" not in report
