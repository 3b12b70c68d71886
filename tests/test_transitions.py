"""The transition table (GRUConfig.transition_k): how it is counted from the training rows, how it
mixes into the next-item distribution (the same on the training, evaluation and serving paths),
how its weight is calibrated, and that it survives a checkpoint and a warm start."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from models.checkpoint import load_version, save_version
from models.data import Vocab, from_sequences, item_transitions, make_batch, row_recency
from models.evaluate import predict
from models.gru import ClickstreamGRU
from models.metrics import recall_mrr_at_k
from models.train import TRANSITION_WEIGHTS, TrainConfig, calibrate_transitions, fit, install_transitions
from models.warmstart import widen

from .test_model import CFG, random_data

TCFG = replace(CFG, transition_k=3)


def _rows(*seqs):
    return from_sequences([[(0, i, 0, 1.7e9 + 10.0 * t, math.nan) for t, i in enumerate(s)] for s in seqs],
                          has_time=True)


def test_successors_are_counted_within_rows_by_distance_and_known_items_only():
    bucket = CFG.n_items + 1  # a hash bucket: never a source or a successor
    data = _rows([1, 2, 3, 2, 2, 4], [1, 3, bucket, 5], [4, 0, 1])
    items, probs = item_transitions(data, TCFG, reach=2)
    assert items.shape == probs.shape == (CFG.item_vocab, 3)

    def row(i):
        return {int(j): round(float(p), 6) for j, p in zip(items[i], probs[i], strict=True) if p > 0}

    # item 1: 2 at d1, 3 at d2 in the first row and at d1 in the second (-> 3 weighs 1.5)
    assert row(1) == {2: 0.4, 3: 0.6}
    # item 2: 3 at d1; 4 at d1 and at d2 (1.5); 2 -> 2 is a repeat, not a transition
    assert row(2) == {3: 0.4, 4: 0.6}
    assert list(items[2][:2]) == [4, 3]  # the heaviest first
    # item 3: 2 at d1 and d2 (1.5); 5 at d2 across the bucket, which counts for distance only
    assert row(3) == {2: 0.75, 5: 0.25}
    assert row(4) == {1: 1.0}  # across an event without an item (a search), at d2
    assert row(5) == {} and row(bucket) == {} and row(0) == {}
    np.testing.assert_allclose(probs.sum(1)[[1, 2, 3, 4]], 1.0, rtol=1e-6)
    # equal weights: the lower index first
    items, _ = item_transitions(_rows([7, 9], [7, 8]), TCFG)
    assert list(items[7][:2]) == [8, 9]


def test_predecessors_count_at_the_backward_weight():
    items, probs = item_transitions(_rows([1, 2, 3], [2, 9]), TCFG, reach=2, backward=0.5)

    def row(i):
        return {int(j): round(float(p), 6) for j, p in zip(items[i], probs[i], strict=True) if p > 0}

    # item 2: 3 and 9 after it (1 each), 1 before it (0.5)
    assert row(2) == {3: 0.4, 9: 0.4, 1: 0.2}
    # item 3: 2 before it at d1 (0.5), 1 at d2 (0.25)
    assert row(3) == {2: round(0.5 / 0.75, 6), 1: round(0.25 / 0.75, 6)}
    # item 1: 2 at d1, 3 at d2
    assert row(1) == {2: round(1 / 1.5, 6), 3: round(0.5 / 1.5, 6)}


def test_only_the_top_k_successors_are_kept():
    data = _rows([1, 2], [1, 2], [1, 2], [1, 3], [1, 3], [1, 4], [1, 5])
    items, probs = item_transitions(data, replace(CFG, transition_k=2), reach=1)
    assert list(items[1]) == [2, 3]
    np.testing.assert_allclose(probs[1], [0.6, 0.4], rtol=1e-6)


def test_rows_are_placed_by_their_last_event_or_by_order_without_time():
    data = from_sequences([[(0, 1, 0, 30.0, math.nan)],
                           [(0, 2, 0, 10.0, math.nan), (0, 3, 0, 20.0, math.nan)],
                           [(0, 4, 0, 5.0, math.nan)]], has_time=True)
    assert row_recency(data).tolist() == [2, 1, 0]
    assert row_recency(replace(data, has_time=False)).tolist() == [0, 1, 2]  # listed oldest first


def test_recency_weighs_newer_rows_more_and_parts_read_as_one_oldest_first():
    old, new = _rows([1, 2]), _rows([1, 3])  # the older row says 1 -> 2, the newer 1 -> 3
    items, probs = item_transitions([old, new], TCFG, recency=0.5)
    # two rows: the older one, one row behind the newest, weighs exp(-1 / (0.5 * 2)) = 1/e
    assert list(items[1][:2]) == [3, 2]
    np.testing.assert_allclose(probs[1][:2], [1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1))],
                               rtol=1e-6)
    # the same two rows in one SeqData (equal last times: row order decides) count the same
    one_i, one_p = item_transitions(_rows([1, 2], [1, 3]), TCFG, recency=0.5)
    assert np.array_equal(one_i, items) and np.array_equal(one_p, probs)
    # recency 0: every row the same; equal weights put the lower index first
    items, probs = item_transitions([old, new], TCFG)
    assert list(items[1][:2]) == [2, 3]
    np.testing.assert_allclose(probs[1][:2], [0.5, 0.5])


def install_random_table(model: ClickstreamGRU, seed: int = 0, weight: float = 0.3) -> ClickstreamGRU:
    """A random neighbour table (some items with none) at `weight`: the readout tests run every
    path with one installed (tests/test_next_item_readout.py's transition-table variant)."""
    k = model.cfg.transition_k
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, 1 + model.cfg.n_items, (model.cfg.item_vocab, k), generator=g, dtype=torch.int32)
    probs = torch.rand(model.cfg.item_vocab, k, generator=g)
    probs[0] = 0  # "no item" has no neighbours
    probs[::4] = 0  # neither have some items
    model.set_transitions(items, probs / probs.sum(1, keepdim=True).clamp_min(1e-9), weight)
    return model


def _with_table(seed=0, weight=0.3, decay=0.0):
    torch.manual_seed(seed)
    return install_random_table(ClickstreamGRU(replace(TCFG, transition_decay=decay)).eval(), seed, weight)


def test_older_window_items_share_the_weight_by_recency():
    """decay 0.5, window [.., a, b, c] (c newest): c counts 1, b has no neighbours, a counts
    0.25, so c's neighbours get 0.8 of the table's weight and a's 0.2."""
    model = ClickstreamGRU(replace(TCFG, transition_decay=0.5)).eval()
    a, b, c, x, y, z = 1, 2, 3, 10, 11, 12
    items = torch.zeros(TCFG.item_vocab, 3, dtype=torch.int32)
    probs = torch.zeros(TCFG.item_vocab, 3)
    items[a, 0], probs[a, 0] = x, 1.0
    items[c, :2], probs[c, :2] = torch.tensor([y, z], dtype=torch.int32), 0.5
    model.set_transitions(items, probs, weight=0.3)
    V = TCFG.item_vocab
    window = torch.zeros(2, TCFG.window, dtype=torch.long)
    window[0, -3:] = torch.tensor([a, b, c])
    window[1, -1] = b  # only an item without neighbours: nothing is mixed in
    got = model.mix_transitions(torch.full((2, V), 1.0 / V), window)
    want = torch.full((2, V), 1.0 / V)
    want[0] *= 0.7
    want[0, [x, y, z]] += 0.3 * torch.tensor([0.2, 0.4, 0.4])
    torch.testing.assert_close(got, want)
    # decay 0: the newest item's neighbours alone
    model.cfg = replace(model.cfg, transition_decay=0.0)
    got = model.mix_transitions(torch.full((1, V), 1.0 / V), window[:1])
    want = torch.full((1, V), 0.7 / V)
    want[0, [y, z]] += 0.15
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("decay", [0.0, 0.6])
def test_the_table_takes_its_weight_from_the_explore_softmax(decay):
    """By hand (slot by slot), and serving's top-K is its top; that step, forward and the
    training loss path agree on it is tests/test_next_item_readout.py's, with a table installed."""
    model = _with_table(decay=decay)
    plain = copy.deepcopy(model)
    with torch.no_grad():
        plain.trans_weight.zero_()
    data = random_data(seed=4)
    b = make_batch(data, list(range(len(data))), TCFG)
    with torch.no_grad():
        out, rq, _ = model(b.x)
        full = model.next_item_probs(out, rq, b.x.window)
        # the explore softmax gives 0.3 of its mass to the window items' neighbours (if any has
        # some), each slot's share decay**distance from the newest, among the slots with some
        explore = torch.softmax(model.explore_logits(out), -1)
        W = b.x.window.shape[-1]
        share = torch.zeros(b.x.window.shape)
        for j in range(W):
            has_some = model.trans_probs[b.x.window[..., j]].sum(-1) > 0
            share[..., j] = decay ** (W - 1 - j) * has_some
        share = share / share.sum(-1, keepdim=True).clamp_min(1e-30)
        q = torch.zeros_like(explore)
        for j in range(W):
            item = b.x.window[..., j]
            q.scatter_add_(-1, model.trans_items[item].long(),
                           model.trans_probs[item] * share[..., j:j + 1])
        has = q.sum(-1, keepdim=True)
        mixed = (1 - 0.3 * has) * explore + 0.3 * q
        att = model._repeat_attention(rq, b.x.window) * out.repeat_gate.unsqueeze(-1)
        want = (mixed * (1 - att.sum(-1, keepdim=True))).scatter_add(-1, b.x.window, att)
        p_plain = plain.next_item_probs(out, rq, b.x.window)
    torch.testing.assert_close(full, want, atol=1e-6, rtol=1e-5)
    assert 0 < float(has.mean()) < 1  # rows with and without neighbours
    assert float((full - p_plain).abs().max()) > 1e-3  # the table does change the ranking
    # serving's top-K is the top of this distribution
    v, _ = model.top_items(out.map(lambda t: t[0]), rq[0], b.x.window[0], 5, n_known=CFG.n_items)
    torch.testing.assert_close(v, full[0][:, 1:1 + CFG.n_items].topk(5, dim=-1).values, atol=1e-6, rtol=1e-5)


def _sequential_data(seed: int, n: int = 60):
    """Sessions that walk a fixed item graph (item i -> i + 1 or i + 7 mostly): a table learns it."""
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(n):
        item = int(rng.integers(1, CFG.n_items + 1))
        s = [item]
        for _ in range(int(rng.integers(2, 10))):
            step = 1 if rng.random() < 0.6 else (7 if rng.random() < 0.7 else int(rng.integers(1, 50)))
            item = (item + step - 1) % CFG.n_items + 1
            s.append(item)
        seqs.append(s)
    return _rows(*seqs)


def test_calibration_ranks_as_predict_does_and_keeps_the_best_validation_mrr():
    data = _sequential_data(seed=1)
    model = _with_table(seed=2, weight=0.0)
    items, probs = item_transitions(data, TCFG)
    model.set_transitions(torch.from_numpy(items), torch.from_numpy(probs))
    probe = copy.deepcopy(model)
    got = calibrate_transitions(model, data, TrainConfig(batch_tokens=64), "cpu", rows_per_chunk=7)
    assert got["positions"] > 200
    for weight, row in got["by_weight"].items():
        weighted = copy.deepcopy(probe)
        with torch.no_grad():
            weighted.trans_weight.fill_(float(weight))
        p, r = recall_mrr_at_k(predict(weighted, data, None, CFG.n_items).item_ranks, 20)
        assert row == {"P@20": round(100 * p, 2), "MRR@20": round(100 * r, 2)}, weight
    mrr = [row["MRR@20"] for row in got["by_weight"].values()]
    assert got["by_weight"][str(got["weight"])]["MRR@20"] == max(mrr)
    assert got["weight"] > 0  # an untrained GRU against the data's own graph: the table helps
    assert float(model.trans_weight) == pytest.approx(got["weight"])


def test_fit_builds_and_weighs_the_table_and_checkpoints_and_warm_starts_keep_it(tmp_path):
    data = _sequential_data(seed=3)
    tcfg = TrainConfig(epochs=1, batch_tokens=64, w_action=0.0, w_churn=0.0, calibrate_gate=False)
    model, report = fit(TCFG, data, data, tcfg, device="cpu")
    assert report["transition_calibration"]["weight"] in TRANSITION_WEIGHTS
    items, probs = item_transitions(data, TCFG, tcfg.transition_reach, tcfg.transition_backward)
    assert np.array_equal(model.trans_items.numpy(), items)
    torch.testing.assert_close(model.trans_probs, torch.from_numpy(probs))
    assert float(model.trans_weight) == pytest.approx(report["transition_calibration"]["weight"])
    _, report = fit(CFG, data, data, tcfg, device="cpu")
    assert "transition_calibration" not in report
    # with recency, fit's table is item_transitions' at that recency; install_transitions
    # rebuilds it from more parts and keeps the chosen weight
    tcfg = replace(tcfg, transition_recency=0.3)
    model, report = fit(TCFG, data, data, tcfg, device="cpu")
    items, probs = item_transitions(data, TCFG, tcfg.transition_reach, tcfg.transition_backward, 0.3)
    assert np.array_equal(model.trans_items.numpy(), items)
    more = _sequential_data(seed=4)
    install_transitions(model, [data, more], tcfg)
    items, probs = item_transitions([data, more], TCFG, tcfg.transition_reach,
                                    tcfg.transition_backward, 0.3)
    assert np.array_equal(model.trans_items.numpy(), items)
    torch.testing.assert_close(model.trans_probs, torch.from_numpy(probs))
    assert float(model.trans_weight) == pytest.approx(report["transition_calibration"]["weight"])

    vocab = Vocab(tuple(f"i{j}" for j in range(1, CFG.n_items + 1)), CFG.item_buckets)
    cats = Vocab(tuple(f"c{j}" for j in range(1, CFG.n_categories + 1)), CFG.category_buckets)
    version = save_version(tmp_path, model, vocab, cats, data={}, metrics={})
    loaded = load_version(tmp_path, version).model
    for name in ("trans_items", "trans_probs", "trans_weight"):
        assert torch.equal(getattr(loaded, name), getattr(model, name)), name
    grown = widen(model, vocab, cats, Vocab(vocab.ids + ("new1", "new2"), vocab.buckets), cats)
    assert grown.trans_items.shape == (TCFG.item_vocab + 2, 3)
    assert torch.equal(grown.trans_items[:1 + CFG.n_items], model.trans_items[:1 + CFG.n_items])
    assert float(grown.trans_probs[1 + CFG.n_items:].abs().sum()) == 0.0  # new items: none yet
    assert float(grown.trans_weight) == float(model.trans_weight)


def test_validation_passes_train_the_scored_positions_with_the_table_out_of_the_loss(monkeypatch):
    import models.train as train_mod

    data = random_data(seed=6, n=30)
    from_ts = float(np.median(data.ts))
    model = ClickstreamGRU(TCFG)
    install_transitions(model, data, TrainConfig())
    model.trans_weight.fill_(0.2)
    before = copy.deepcopy(model.state_dict())
    seen = []
    real = train_mod.batch_losses

    def spy(m, b, mask=None, sampler=None):
        seen.append((float(m.trans_weight), b.rows.copy(), mask))
        return real(m, b, mask, sampler=sampler)

    monkeypatch.setattr(train_mod, "batch_losses", spy)
    tcfg = TrainConfig(batch_tokens=64, valid_passes=2, recent_lr=3e-4)
    report = train_mod.validation_passes(model, data, data, tcfg, "cpu", valid_from_ts=from_ts)

    last = data.ts[data.offsets[1:] - 1]
    scored = np.nonzero(last >= from_ts)[0]  # rows with a position at or after from_ts
    assert 0 < len(scored) < len(data)
    assert report["passes"] == 2 and report["rows"] == len(scored) and len(report["train_loss"]) == 2
    assert all(w == 0.0 for w, *_ in seen)  # the table is out of the loss during the passes
    rows = np.concatenate([r for _, r, _ in seen])
    assert sorted(rows.tolist()) == sorted(scored.tolist() * 2)  # each such row once per pass
    for _, batch_rows, mask in seen:  # the loss only at positions from from_ts
        for i, r in enumerate(batch_rows):
            s, e = data.offsets[r], data.offsets[r + 1]
            want = np.zeros(mask.shape[1], bool)
            want[: e - s] = data.ts[s:e] >= from_ts
            assert np.array_equal(mask[i].numpy(), want), r
    assert float(model.trans_weight) == pytest.approx(0.2)  # restored
    assert not model.training
    moved = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "gru.weight_hh_l0" in moved and "trans_probs" not in moved
