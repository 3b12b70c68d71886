"""Offline = online: one event sequence (late, duplicate, idle-gap events) through training's path
and through the stream's path gives the same inputs (exactly) and the same outputs.

Training's path: models.datasets.events_to_seqdata -> models.data.make_batch -> a full forward
over each sequence. The stream's path: the real EventPipeline (observe + score_batch) over a
dict-backed table, one message per batch and the whole sequence as one batch. Pure: no broker.
"""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
import torch

from models import features
from models.checkpoint import save_version
from models.data import Vocab, make_batch
from models.datasets import events_to_seqdata
from models.features import SERVING_DEFAULTS, WindowLimits
from models.gru import ClickstreamGRU, GRUConfig, sequence_profile
from models.train import run_incremental
from stream_app.agents import EventPipeline
from stream_app.config import Settings
from stream_app.instruments import Metrics
from stream_app.predictor import Predictor
from stream_app.state import decode

from .test_pipeline import NOW, DictTable, Msg

LIMITS = WindowLimits(events=6, seconds=3600.0)
T0 = NOW - 100_000.0


def _ev(i: int | str, dt: float, action: str = "view", item: str | None = "i1", user: str = "u1",
        cat: str | None = "c1", price: float | None = None) -> dict:
    return {"event_id": f"e{i}", "user_id": user, "ts": T0 + dt, "action": action, "item_id": item,
            "category_id": cat, "price": price}


# u1 (and a little of u2), in arrival order. Window: 6 events, 3600 s; the model reads 4 items.
SEQUENCE = [
    _ev(0, 0), _ev(1, 5, item="i2"), _ev(2, 30, "add_to_cart", "i2", price=19.9),
    _ev(3, 20, item="i3", cat="c2"),  # late: gap 0
    _ev(4, 100, item="i4"),  # gap 70: from the newest event (e2), not from e3
    _ev(2, 30, "add_to_cart", "i2", price=19.9),  # replayed while in the window: dropped
    _ev("u2a", 50, item="i2", user="u2"), _ev(5, 2000),
    _ev(6, 3000, "purchase", "i2", price=19.9), _ev("u2b", 60, item="i3", user="u2"),
    _ev(7, 4500, item="i5"),  # the events before t=900 leave the window by time
    _ev(8, 200, item="i6"),  # late by more than the window: in it for one step only
    _ev(9, 4600, item="i3"),
    _ev(10, 4600 + 7200, item="i7", cat="c3"),  # idle for longer than the window: a reset
    _ev(11, 11_810, "search", None, cat=None), _ev(12, 11_900, item="i7"),
    _ev(11, 11_810, "search", None, cat=None),  # replay
    *[_ev(13 + k, 11_910 + 10 * k, item=f"i{1 + k % 4}", price=5.0 * k) for k in range(6)],
    _ev(1, 5, item="i2"),  # an old id long out of the window: the stream applies it again (late)
    _ev("u2c", 3000, "add_to_cart", "i4", user="u2"),
]


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "churn_profile"])
def predictor(tmp_path_factory, request):
    """An untrained model (every input and readout path switched on; with and without the churn
    head's profile) in a one-version registry."""
    torch.manual_seed(0)
    items = Vocab(tuple(f"i{k}" for k in range(1, 8)), buckets=4)
    cats = Vocab(("c1", "c2", "c3"), buckets=2)
    cfg = GRUConfig(n_items=len(items), n_categories=len(cats), item_buckets=4, category_buckets=2,
                    emb_dim=16, hidden=16, window=4, repeat_flag=True, gap_buckets=True,
                    window_attention=True, last_item_readout=True, dropout=0.0,
                    churn_profile=request.param)
    model = ClickstreamGRU(cfg)
    with torch.no_grad():
        for prm in model.parameters():  # break the zero-initialised biases' ties
            prm.add_(0.3 * torch.randn_like(prm))
    reg = tmp_path_factory.mktemp("registry")
    save_version(reg, model.eval(), items, cats, {"source": "test_features"}, {})
    return Predictor(reg, device="cpu", top_k=3, cache_users=100)


def _pipeline(predictor: Predictor, table: DictTable) -> EventPipeline:
    return EventPipeline(metrics=Metrics(), predictor=predictor, table=table, limits=LIMITS,
                         dead_letters="dlq", next_action="na", churn="churn", clock=lambda: NOW)


def _stream(predictor: Predictor, seq: list[dict], batch: int, monkeypatch) -> tuple[dict, dict, DictTable]:
    """Feeds `seq` through the pipeline `batch` messages at a time. Returns {(event id, replayed):
    [inputs, ...]} (batch=1 only) and {(event id, replayed): [outputs, ...]}, in arrival order."""
    predictor.install(predictor.prepare(predictor.version))  # an empty hidden-state cache
    calls: list = []
    real = predictor.step_inputs

    def spy(states, gaps):
        x = real(states, gaps)
        calls.append(x)
        return x

    monkeypatch.setattr(predictor, "step_inputs", spy)
    table = DictTable()
    pipe = _pipeline(predictor, table)
    msgs = [Msg(e["user_id"].encode(), orjson.dumps(e), 0, n) for n, e in enumerate(seq)]
    inputs: dict = {}
    outputs: dict = {}
    for s in range(0, len(msgs), batch):
        n_calls = len(calls)
        out = pipe.process(msgs[s:s + batch])
        assert not [m for m in out.messages if m.topic == "dlq"]
        na = [orjson.loads(m.value) for m in out.messages if m.topic == "na"]
        churn = [orjson.loads(m.value) for m in out.messages if m.topic == "churn"]
        for v, c in zip(na, churn, strict=True):
            outputs.setdefault((v["event_id"], v["replayed"]), []).append({
                "action": np.array(list(v["action_probs"].values())), "churn": c["churn_probability"],
                "top": [(t["item_id"], t["score"]) for t in v["top_items"]]})
        if batch == 1:
            (x,) = calls[n_calls:]
            inputs.setdefault((na[0]["event_id"], na[0]["replayed"]), []).append(x)
        for (p, u), row in out.rows.items():
            table.put_local(p, {u.encode(): row})
    monkeypatch.setattr(predictor, "step_inputs", real)
    return inputs, outputs, table


@torch.no_grad()
def _training(predictor: Predictor):
    """(event index, inputs at that position, outputs) for every event training keeps."""
    model = predictor.model
    data = events_to_seqdata(SEQUENCE, predictor.items, predictor.categories, limits=LIMITS)
    b = make_batch(data, list(range(len(data))), model.cfg)
    out, rq, _ = model(b.x)
    profile = sequence_profile(b.x.action, b.x.log_gap)  # what forward derived
    probs = torch.softmax(out.action_logits, -1)
    churn = torch.sigmoid(out.churn_logit)
    top_p, top_i = model.top_items(out, rq, b.x.window, predictor.k, len(predictor.items))
    rows = []
    for j, r in enumerate(b.rows):
        for t in range(int(data.lengths()[r])):
            n = int(data.origin[data.offsets[r] + t])
            x = {f: getattr(b.x, f)[j, t] for f in ("action", "item", "category", "log_gap",
                                                    "log_price", "has_price", "window")}
            x["profile"] = profile[j, t]
            top = [(predictor.items.ids[int(i) - 1], float(p))
                   for i, p in zip(top_i[j, t], top_p[j, t], strict=True)]
            rows.append((n, x, {"action": probs[j, t].numpy(), "churn": float(churn[j, t]), "top": top}))
    return sorted(rows, key=lambda row: row[0])


def _same_outputs(a: dict, b: dict) -> None:
    np.testing.assert_allclose(a["action"], b["action"], rtol=1e-5, atol=1e-6)
    assert a["churn"] == pytest.approx(b["churn"], rel=1e-5, abs=1e-6)
    assert [i for i, _ in a["top"]] == [i for i, _ in b["top"]]
    np.testing.assert_allclose([p for _, p in a["top"]], [p for _, p in b["top"]], rtol=1e-5, atol=1e-6)


def test_the_sequence_has_what_it_claims():
    data = events_to_seqdata(SEQUENCE, Vocab((), 4), Vocab((), 2), limits=LIMITS)
    kept = sorted(data.origin.tolist())
    assert 5 not in kept and 16 not in kept  # the two replays
    assert len(kept) == len(SEQUENCE) - 2
    assert data.keys == ["u1", "u1", "u2"]  # u1 starts afresh after the idle pause
    assert data.lengths().tolist() == [10, 10, 3]


def _nth(rows):
    """(event id, how many times this id was applied before) for training's rows."""
    seen: dict[str, int] = {}
    for n, x, o in rows:
        key = SEQUENCE[n]["event_id"]
        seen[key] = seen.get(key, -1) + 1
        yield key, seen[key], x, o


def test_stream_inputs_equal_training_inputs_exactly(predictor, monkeypatch):
    inputs, _, _ = _stream(predictor, SEQUENCE, 1, monkeypatch)
    train = _training(predictor)
    assert sorted(k for k, r in inputs if not r) == sorted({SEQUENCE[n]["event_id"] for n, _, _ in train})
    assert sum(len(v) for (_, r), v in inputs.items() if not r) == len(train)
    for key, i, x, _ in _nth(train):  # e1 is applied twice: its id had left the window
        sx = inputs[(key, False)][i]
        for f, v in x.items():
            if f == "profile":  # training sums float32-rounded gaps: equal to float rounding
                if predictor.model.cfg.churn_profile:
                    np.testing.assert_allclose(sx.profile[0].numpy(), v.numpy(), rtol=1e-6,
                                               err_msg=key)
                else:
                    assert sx.profile.shape[-1] == 0
                continue
            assert torch.equal(getattr(sx, f)[0], v), (key, f, getattr(sx, f)[0], v)
    gaps = {SEQUENCE[n]["event_id"]: math.expm1(float(x["log_gap"])) for n, x, _ in train}
    assert gaps["e3"] == 0.0 and gaps["e8"] == 0.0 and gaps["e10"] == 0.0  # late, late, reset
    assert gaps["e4"] == pytest.approx(70.0, rel=1e-6)  # from the newest event (e2), not from e3


@pytest.mark.parametrize("batch", [1, len(SEQUENCE)], ids=["one-per-batch", "one-batch"])
def test_stream_outputs_equal_training_outputs(predictor, monkeypatch, batch):
    _, outputs, _ = _stream(predictor, SEQUENCE, batch, monkeypatch)
    train = _training(predictor)
    for key, i, _, o in _nth(train):
        _same_outputs(outputs[(key, False)][i], o)
    if batch == 1:  # a replay gets the prediction that followed the user's latest event
        by_id = {SEQUENCE[n]["event_id"]: o for n, _, o in train}
        _same_outputs(outputs[("e2", True)][0], by_id["e4"])
        _same_outputs(outputs[("e11", True)][0], by_id["e12"])


def test_rebuild_from_the_window_equals_the_stepped_state(predictor, monkeypatch):
    """After the idle reset u1's window (6 events, 1 h) holds everything since the reset, a late
    and a replayed event included: rebuilding from it gives the hidden state stepping gave."""
    reset = [e["event_id"] for e in SEQUENCE].index("e10")
    part = SEQUENCE[reset:reset + 5]  # e10, e11, e12, e11 again, e13
    part.insert(3, _ev(99, 11_850, item="i2"))  # late
    _, _, table = _stream(predictor, SEQUENCE[:reset] + part, 1, monkeypatch)
    st = decode(table.get(0, b"u1"))
    assert [w.ts - T0 for w in st.window] == [11_800, 11_810, 11_900, 11_850, 11_910]
    h = predictor.rebuild([st.window], LIMITS)
    np.testing.assert_allclose(h[:, 0].reshape(-1).numpy(), st.hidden, rtol=1e-5, atol=1e-6)


def test_vectorised_windows_follow_the_stream_recursion():
    rng = np.random.default_rng(0)
    for _ in range(200):
        lim = WindowLimits(int(rng.integers(1, 6)), float(rng.choice([5.0, 50.0, 1e9])))
        n = int(rng.integers(1, 15))
        ts = np.cumsum(rng.exponential(8.0, n))
        if rng.random() < 0.5:  # late events
            ts = ts - rng.exponential(20.0, n) * (rng.random(n) < 0.3)
        item = torch.from_numpy(rng.integers(1, 50, n))[None]
        W = int(rng.integers(1, lim.events + 1))
        got = features.windows(item, ts[None], np.array([n]), W, lim)[0]
        for t, pos in enumerate(features.window_steps(ts.tolist(), lim)):
            tail = pos[-W:]
            want = [0] * (W - len(tail)) + item[0, tail].tolist()
            assert got[t].tolist() == want


def test_training_defaults_are_the_services():
    s = Settings()
    assert (SERVING_DEFAULTS.events, SERVING_DEFAULTS.seconds) == (s.window_events, s.window_seconds)


def test_churn_labels_see_past_a_reset():
    """A row ends at an idle reset, not the user's data: the label still asks when they came back."""
    evs = [_ev(0, 0), _ev(1, 10), _ev(2, 5010), _ev(3, 5020)]  # a 5000 s pause > the 3600 s window
    data = events_to_seqdata(evs, Vocab((), 4), Vocab((), 2), end_ts=T0 + 100_000, limits=LIMITS)
    assert data.lengths().tolist() == [2, 2]
    cfg = GRUConfig(n_items=0, n_categories=0, window=4, churn_horizon_s=7200.0)
    b = make_batch(data, [0, 1], cfg)
    assert b.churn[0].tolist() == [0.0, 0.0]  # back after 5000 s: within the horizon
    assert b.churn[1].tolist() == [0.0, 1.0]
    assert b.next_item[0, 1].item() == 0  # but nothing to predict across the reset


@torch.no_grad()
def test_incremental_evaluation_steps_through_the_same_inputs(predictor):
    """models.train.run_incremental (the retrain judge's step_metrics) steps the stream's inputs:
    its windows and outputs at every position equal training's forward over the same rows."""
    model = predictor.model
    data = events_to_seqdata(SEQUENCE, predictor.items, predictor.categories, limits=LIMITS)
    b = make_batch(data, list(range(len(data))), model.cfg)
    out, _, _ = model(b.x)
    seen = []

    def collect(rows, pos, o, rq, win):
        for j, (r, t) in enumerate(zip(rows, pos, strict=True)):
            assert torch.equal(win[j], b.x.window[r, t]), (r, t)
            assert float(o.churn_logit[j]) == pytest.approx(float(out.churn_logit[r, t]), abs=1e-5)
            np.testing.assert_allclose(o.action_logits[j].numpy(), out.action_logits[r, t].numpy(),
                                       atol=1e-5)
            seen.append((int(r), int(t)))

    run_incremental(model, data, np.arange(len(data)), collect)
    assert len(seen) == int(data.lengths().sum())
