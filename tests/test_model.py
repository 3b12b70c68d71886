"""The model's contracts: step == forward, purity, the mixture head, labels, checkpoints."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

import models.train as train_mod
from models.checkpoint import CheckpointError, current_version, load_version, save_version
from models.data import Vocab, batches, from_sequences, make_batch
from models.gru import ClickstreamGRU, GRUConfig
from models.metrics import expected_calibration_error, macro_f1, pr_auc, recall_mrr_at_k, roc_auc
from models.train import TrainConfig, fit, init_output_priors, run_incremental

CFG = GRUConfig(n_items=50, n_categories=5, item_buckets=8, category_buckets=4, emb_dim=16,
                hidden=24, layers=2, window=6, churn_horizon_s=100.0, repeat_flag=True,
                gap_buckets=True)


def random_data(seed=0, n=12, max_len=15):
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(n):
        ts = 1.7e9 + np.cumsum(rng.exponential(60, rng.integers(1, max_len + 1)))
        seqs.append([(int(rng.integers(6)), int(rng.integers(0, CFG.item_vocab)),
                      int(rng.integers(0, CFG.category_vocab)), float(t),
                      float(rng.uniform(1, 99)) if rng.random() < .5 else math.nan) for t in ts])
    return from_sequences(seqs, has_time=True)


def _devices():
    yield "cpu"
    if torch.cuda.is_available():
        yield "cuda"


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_step_by_step_equals_full_forward(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine; the CPU variant ran")
    torch.manual_seed(0)
    model = ClickstreamGRU(CFG).to(device).eval()
    data = random_data()
    b = make_batch(data, list(range(len(data))), CFG).to(device)
    with torch.no_grad():
        out, rq, _ = model(b.x)
        full_items = model.item_log_probs(out, rq, b.x.window)
    got = {}

    def collect(rows, pos, o, q, win):
        lp = model.item_log_probs(o, q, win)
        for i, (r, t) in enumerate(zip(rows, pos, strict=True)):
            got[(int(r), int(t))] = (o.action_logits[i], o.churn_logit[i], lp[i])

    run_incremental(model, data, np.arange(len(data)), collect, device)
    assert len(got) == int(b.valid.sum())
    for (r, t), (a, c, lp) in got.items():
        torch.testing.assert_close(a, out.action_logits[r, t], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(c, out.churn_logit[r, t], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lp, full_items[r, t], atol=1e-5, rtol=1e-5)


def test_step_returns_new_state_and_never_mutates_input():
    model = ClickstreamGRU(CFG).eval()
    data = random_data(n=3)
    b = make_batch(data, [0, 1, 2], CFG)
    h = torch.randn(CFG.layers, 3, CFG.hidden)
    h_before = h.clone()
    x = type(b.x)(**{k: v[:, 0] for k, v in vars(b.x).items()})
    _, _, h_new = model.step(x, h)
    assert torch.equal(h, h_before) and not torch.equal(h_new, h)


def _forward(seed: int):
    """A random model's outputs over a random batch: (model, batch, outputs, repeat query)."""
    torch.manual_seed(seed)
    model = ClickstreamGRU(CFG).eval()
    b = make_batch(random_data(seed), list(range(12)), CFG)
    with torch.no_grad():
        out, rq, _ = model(b.x)
    return model, b, out, rq


def test_training_loss_path_equals_full_distribution():
    model, b, out, rq = _forward(3)
    with torch.no_grad():
        full = model.item_log_probs(out, rq, b.x.window)
        target = torch.randint(1, CFG.item_vocab, b.x.item.shape)
        fast = model.item_target_log_prob(out, rq, b.x.window, target)
    torch.testing.assert_close(fast, full.gather(-1, target.unsqueeze(-1)).squeeze(-1),
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(full.exp().sum(-1), torch.ones_like(fast), atol=1e-4, rtol=1e-4)


def test_serving_top_items_are_the_top_of_the_full_distribution():
    model, b, out, rq = _forward(5)
    with torch.no_grad():
        out = type(out)(*(getattr(out, f).flatten(0, 1) for f in out.__dataclass_fields__))
        rq, win = rq.flatten(0, 1), b.x.window.flatten(0, 1)
        full = model.item_log_probs(out, rq, win).exp()
        v, i = model.top_items(out, rq, win, 7, n_known=CFG.n_items)
    assert bool(((i >= 1) & (i <= CFG.n_items)).all())  # never padding or a hash bucket
    torch.testing.assert_close(v, full.gather(1, i), atol=1e-6, rtol=1e-5)
    ref = full[:, 1:1 + CFG.n_items].topk(7, dim=-1).values
    torch.testing.assert_close(v, ref, atol=1e-6, rtol=1e-5)
    # in chunks of 3 rows (memory bound), and with leading (B, T) dimensions: the same answer
    with torch.no_grad():
        v3, i3 = model.top_items(out, rq, win, 7, n_known=CFG.n_items, chunk_elements=3 * CFG.item_vocab)
        _, b2, out2, rq2 = _forward(5)
        v2, i2 = model.top_items(out2, rq2, b2.x.window, 7, n_known=CFG.n_items, chunk_elements=1)
    assert v.shape[0] > 3 and torch.equal(i3, i)
    torch.testing.assert_close(v3, v, atol=1e-6, rtol=1e-5)
    assert v2.shape == (*b2.x.window.shape[:-1], 7)
    torch.testing.assert_close(v2.flatten(0, 1), v, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(i2.flatten(0, 1), i, atol=0, rtol=0)


def test_sampled_softmax_is_exact_when_every_item_is_sampled_once():
    model, b, out, rq = _forward(4)
    with torch.no_grad():
        target = torch.randint(1, CFG.item_vocab, b.x.item.shape)
        full = model.item_target_log_prob(out, rq, b.x.window, target)
        every = torch.arange(CFG.item_vocab)  # q uniform over V, drawn V times: K q = 1
        sampled = model.item_target_log_prob(out, rq, b.x.window, target, every,
                                             torch.zeros(CFG.item_vocab))
        # a sample that misses the target's strongest rivals overestimates p(target)
        few = torch.arange(1, 6)
        rough = model.item_target_log_prob(out, rq, b.x.window, target, few, torch.zeros(5))
    torch.testing.assert_close(sampled, full, atol=1e-5, rtol=1e-5)
    assert bool((rough >= full - 1e-6).all()) and bool((rough > full + 1e-3).any())


def test_bf16_training_keeps_float32_weights_and_the_float32_loss():
    data = random_data(seed=7, n=30)
    torch.manual_seed(7)
    model = ClickstreamGRU(CFG)
    sampler = train_mod.NegativeSampler.from_data(data, CFG.item_vocab, 16, source="mixed")
    b = make_batch(data, list(range(30)), CFG)
    model.eval()  # no dropout: the two precisions see the same network
    with torch.no_grad():
        torch.manual_seed(0)
        exact = train_mod.batch_losses(model, b, sampler=sampler)
        torch.manual_seed(0)  # the same negatives
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rough = train_mod.batch_losses(model, b, sampler=sampler)
    for head in ("item", "action", "churn"):
        assert getattr(rough, head).dtype == torch.float32
        assert abs(float(getattr(rough, head)) - float(getattr(exact, head))) < 0.05
    before = model.item_query.weight.detach().clone()
    tcfg = TrainConfig(batch_tokens=64, bf16=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    running, seen = train_mod.train_pass(model, data, opt, sampler, tcfg, np.random.default_rng(0),
                                         torch.device("cpu"))
    assert seen > 0 and math.isfinite(running)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not torch.equal(model.item_query.weight, before)


def test_heads_start_at_the_training_label_rates():
    # two users: actions 0,2,2 and 0,5 (next actions: 2,2,5); item 3 follows twice, item 4 once;
    # gaps 10 s, 500 s (horizon 100: churned), 50 s; the last events are censored or churned
    nan = math.nan
    data = from_sequences([[(0, 1, 0, 0.0, nan), (2, 3, 0, 10.0, nan), (2, 3, 0, 510.0, nan)],
                           [(0, 2, 0, 0.0, nan), (5, 4, 0, 50.0, nan)]], has_time=True, end_ts=560.0)
    model = ClickstreamGRU(CFG)
    init_output_priors(model, data)
    counts = np.ones(CFG.n_actions)
    np.add.at(counts, [2, 2, 5], 1)
    np.testing.assert_allclose(model.action_head.bias.detach().numpy(), np.log(counts / counts.sum()),
                               rtol=1e-6)
    bias = model.item_bias.detach().numpy()
    assert bias[3] > bias[4] > bias[1]  # followed twice, once, never
    # labelled (ts + 100 <= 560): t=0 (next in 10: stays), t=10 (next in 500: churned),
    # t=0 (next in 50: stays), t=50 (no next: churned); add-one smoothing: (2+1)/(4+2)
    assert model.churn_head.bias.item() == pytest.approx(math.log(0.5 / 0.5), abs=1e-6)


def test_models_package_is_pure():
    code = ("import models.gru, models.data, models.train, models.metrics, models.checkpoint, "
            "models.datasets, models.challenger, models.warmstart, models.evaluate, "
            "models.recipes, sys; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('faust', 'aiokafka', 'kafka', 'prometheus_client', 'stream_app', 'mode')]; "
            "print(bad); assert not bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_vocab_hashes_unseen_items_into_stable_buckets():
    v = Vocab.build(["a", "b", "a", None], buckets=16)
    assert v.index("a") == 1 and v.index("b") == 2 and v.index(None) == 0
    new = [v.index(f"new-{i}") for i in range(200)]
    assert all(3 <= i < 3 + 16 for i in new)
    assert len(set(new)) == 16  # spread over every bucket, not aliased to one id
    assert Vocab(v.ids, 16).index("new-7") == v.index("new-7")  # stable across processes


def test_labels_next_event_and_censored_churn():
    H = CFG.churn_horizon_s
    t0 = 1.7e9
    seq = [(0, 1, 0, t0, math.nan), (2, 1, 0, t0 + 10, 5.0), (5, 1, 0, t0 + 10 + H + 1, 5.0)]
    data = from_sequences([seq, [(0, 3, 0, t0 + 5000, math.nan)]], has_time=True, end_ts=t0 + 5050)
    b = make_batch(data, [0, 1], CFG)
    assert b.next_action[0, :3].tolist() == [2, 5, -100]
    assert b.next_item[0, :3].tolist() == [1, 1, 0]
    # 10 s gap -> stays; gap > H -> churned; last event observed > H before the end -> churned
    assert b.churn[0, :3].tolist() == [0.0, 1.0, 1.0]
    assert b.churn[1, 0].item() == -1.0  # only 50 s of observation left: censored
    assert b.x.log_gap[0, 1].item() == pytest.approx(math.log1p(10))


def test_batches_cover_every_row_once():
    data = random_data(n=40)
    seen = np.concatenate([b.rows for b in batches(data, CFG, max_tokens=64, shuffle=True)])
    assert sorted(seen.tolist()) == list(range(40))
    some = np.array([3, 7, 8, 30])
    seen = np.concatenate([b.rows for b in batches(data, CFG, max_tokens=64, shuffle=True, rows=some)])
    assert sorted(seen.tolist()) == some.tolist()


def test_the_recency_pass_trains_the_newest_rows_once_from_the_early_stopped_weights(monkeypatch):
    data = random_data(seed=5, n=40)
    tcfg = TrainConfig(epochs=1, batch_tokens=64, calibrate_gate=False)
    plain, report = fit(CFG, data, data, tcfg, device="cpu")
    assert "recent_pass" not in report
    passes = []
    real_pass = train_mod.train_pass

    def spy(model, d, opt, *args, rows=None, **kw):
        passes.append((rows, opt.param_groups[0]["lr"]))
        return real_pass(model, d, opt, *args, rows=rows, **kw)

    monkeypatch.setattr(train_mod, "train_pass", spy)
    tuned, report = fit(CFG, data, data, replace(tcfg, recent_fraction=0.25, recent_lr=3e-4), device="cpu")
    (epoch_rows, _), (rows, lr) = passes  # one epoch, then the recency pass
    assert epoch_rows is None and lr == 3e-4
    newest = np.argsort(data.ts[data.offsets[1:] - 1], kind="stable")[-10:]  # 25% of 40 rows
    assert sorted(rows.tolist()) == sorted(newest.tolist())
    assert report["recent_pass"]["rows"] == 10
    assert set(report["recent_pass"]["valid_after"]) == {"item", "action", "churn", "total"}
    assert report["recent_pass"]["valid_after"] != report["recent_pass"]["valid_before"]
    # the same seed and epoch: the pass is what moves the weights away from the plain fit
    assert not torch.equal(tuned.gru.weight_hh_l0, plain.gru.weight_hh_l0)


def test_checkpoint_roundtrip_and_checksum(tmp_path):
    model = ClickstreamGRU(CFG).eval()
    items, cats = Vocab(tuple(f"i{i}" for i in range(50)), 8), Vocab(tuple("abcde"), 4)
    v = save_version(tmp_path, model, items, cats, {"source": "test"}, {"m": 1})
    assert current_version(tmp_path) == v
    loaded = load_version(tmp_path)
    for k, t in model.state_dict().items():
        assert torch.equal(t, loaded.model.state_dict()[k])
    assert loaded.items.index("i3") == items.index("i3") and loaded.manifest["metrics"] == {"m": 1}
    v2 = save_version(tmp_path, model, items, cats, {}, {})
    assert current_version(tmp_path) == v  # later versions do not replace the current one
    w = tmp_path / "versions" / v2 / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:-4] + b"XXXX")
    with pytest.raises(CheckpointError, match="checksum"):
        load_version(tmp_path, v2)
    with pytest.raises(CheckpointError, match="stream-app train"):
        load_version(tmp_path / "empty")


def test_metrics_against_hand_computed_values():
    assert recall_mrr_at_k(np.array([1, 2, 30, 4]), k=20) == pytest.approx((0.75, (1 + .5 + .25) / 4))
    assert roc_auc(np.array([.1, .4, .35, .8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert roc_auc(np.array([.5, .5]), np.array([0, 1])) == pytest.approx(0.5)
    assert pr_auc(np.array([.9, .8, .7]), np.array([1, 0, 1])) == pytest.approx((1 + 2 / 3) / 2)
    assert expected_calibration_error(np.array([.2, .2, .8, .8]), np.array([0, 1, 1, 1])) == \
        pytest.approx(0.5 * .3 + 0.5 * .2)
    probs = np.eye(3)[[0, 1, 1, 2]]
    assert macro_f1(probs, np.array([0, 1, 2, 2])) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_churn_profile_step_equals_forward_and_is_required_when_stepping():
    """A churn head that reads the user's profile: forward from a fresh start derives it from the
    sequence, step gets it the way the stream keeps it (running counts), and the two agree;
    stepping without it fails loudly instead of scoring on nothing."""
    from dataclasses import replace as dc_replace

    cfg = dc_replace(CFG, churn_profile=True)
    torch.manual_seed(0)
    model = ClickstreamGRU(cfg).eval()
    data = random_data(7)
    b = make_batch(data, list(range(len(data))), cfg)
    with torch.no_grad():
        out, _, _ = model(b.x)
    got = {}

    def collect(rows, pos, o, q, win):
        for i, (r, t) in enumerate(zip(rows, pos, strict=True)):
            got[(int(r), int(t))] = o.churn_logit[i]

    run_incremental(model, data, np.arange(len(data)), collect)
    assert len(got) == int(b.valid.sum())
    for (r, t), c in got.items():
        torch.testing.assert_close(c, out.churn_logit[r, t], atol=1e-5, rtol=1e-5)
    x = type(b.x)(**{k: v[:, 0] for k, v in vars(b.x).items() if k != "profile"})
    with pytest.raises(ValueError, match="profile"):
        model.step(x, model.init_state(len(data)))


def test_churn_head_starts_at_the_profile_regression():
    from dataclasses import replace as dc_replace

    cfg = dc_replace(CFG, churn_profile=True)
    model = ClickstreamGRU(cfg)
    init_output_priors(model, random_data(8, n=40, max_len=30))
    w = model.churn_head.weight.detach()[0]
    assert torch.count_nonzero(w[:cfg.hidden]) == 0 and torch.count_nonzero(w[cfg.hidden:]) > 0
