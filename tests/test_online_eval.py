"""Online evaluation without Kafka: hand-made pairs, the kept prediction in the state row, and
controlled streams where the published prediction is known to be right or wrong."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clickstream_tools.sources import simulated_events
from models.features import WindowLimits
from stream_app.instruments import Metrics
from stream_app.online_eval import (
    Kept,
    Pairs,
    Totals,
    evaluate,
    evaluate_expired,
    item_hash,
    item_hashes,
)
from stream_app.predictor import Predictor
from stream_app.records import ACTION_INDEX, ACTIONS, Event
from stream_app.scoring import score_batch
from stream_app.state import _HEAD, FORMAT, UserState, WindowEvent, decode, encode

from .modelkit import make_registry

LIM = WindowLimits(events=20, seconds=1e9)
T0 = 1.7e9


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    path = tmp_path_factory.mktemp("registry")
    make_registry(path)
    return Predictor(path, device="cpu")


def _pairs(probs, churn, items, next_action, next_item, gap, versions=None):
    n = len(probs)
    k = max(len(i) for i in items)
    it = np.zeros((n, k), np.uint32)
    for r, row in enumerate(items):
        it[r, :len(row)] = item_hashes(row)
    return Pairs(versions or ["v1"] * n, np.full(n, T0), np.array(probs, np.float32),
                 np.array(churn, np.float32), it, np.array([len(i) for i in items]),
                 T0 + np.array(gap, np.float64), np.array(next_action),
                 np.array([item_hash(i) if i else 0 for i in next_item], np.uint32),
                 np.array([i is not None for i in next_item]))


def test_pairs_are_scored_right_and_wrong():
    probs = [[0.7, 0.1, 0.1, 0.05, 0.05, 0.0]] * 4
    pairs = _pairs(probs, churn=[0.05, 0.95, 0.5, 0.2],
                   items=[["a", "b", "c"]] * 4,
                   next_action=[0, 1, 0, 2],       # right, wrong, right, wrong
                   next_item=["a", "c", "z", None],  # rank 1, rank 3, absent, no item
                   gap=[10.0, 5000.0, 60.0, 1799.0])
    t = evaluate(pairs, horizon_s=1800.0)["v1"]
    assert (t.action_scored, t.action_correct) == (4, 2)
    assert t.action_log_loss == pytest.approx(-2 * math.log(0.7) - math.log(0.1) - math.log(0.1), rel=1e-6)
    assert (t.item_scored, t.item_hits) == (3, 2)
    assert t.item_reciprocal_rank == pytest.approx(1 + 1 / 3)
    assert t.churn_scored == 4  # only the 5000 s gap is past the horizon
    assert t.churn_log_loss == pytest.approx(
        -math.log(0.95) - math.log(0.95) - math.log(0.5) - math.log(0.8), rel=1e-5)
    assert t.calibration[0, 0] == 1 and t.calibration[9, 1] == 1 and t.calibration[5, 0] == 1
    assert t.calibration[2, 0] == 1 and t.calibration.sum() == 4


def test_totals_are_kept_apart_by_model_version():
    probs = [[1.0, 0, 0, 0, 0, 0]] * 3
    pairs = _pairs(probs, [0.1] * 3, [["a"]] * 3, [0, 0, 1], ["a", "b", "a"], [1, 1, 1],
                   versions=["old", "new", "old"])
    out = evaluate(pairs, 1800.0)
    assert (out["old"].action_correct, out["old"].item_hits, out["old"].action_scored) == (1, 2, 2)
    assert (out["new"].action_correct, out["new"].item_hits, out["new"].action_scored) == (1, 0, 1)
    assert out["old"].action_log_loss == pytest.approx(-math.log(1e-7))  # clipped, never inf


def test_expired_users_count_as_churned_once_the_horizon_has_passed():
    def kept(ts, p):
        return Kept("v1", ts, np.zeros(6, np.float16), p, np.zeros(0, np.uint32))

    out = evaluate_expired([kept(T0, 0.9), kept(T0 + 100, 0.3), kept(T0 + 1000, 0.8)],
                           clock=T0 + 1800, horizon_s=1800.0)
    t = out["v1"]
    assert t.churn_scored == 1 and t.action_scored == 0  # only the first: the others are censored
    assert t.churn_log_loss == pytest.approx(-math.log(0.9), rel=1e-6) and t.calibration[9, 1] == 1
    assert evaluate_expired([kept(T0, 0.5)], clock=T0 + 10, horizon_s=1800.0) == {}


def test_the_kept_prediction_survives_the_state_row_and_older_formats_still_read():
    k = Kept("v2", T0, np.array([0.5, 0.25, 0.25, 0, 0, 0], np.float16), 0.125,
             np.array([7, 8, 9], np.uint32))
    w = (WindowEvent(0, T0, math.nan, "a", None, 1),)
    for state_version in ("v2", "v1"):  # the version is stored only when it differs
        s = UserState(state_version, np.ones(4, np.float32), 1, T0, T0, 0.0, (1, 0, 0, 0, 0, 0), w, 5, k)
        back = decode(encode(s)).last_prediction
        assert back is not None and back.version == "v2" and back.ts == T0 and back.churn == 0.125
        assert back.action_probs.tolist() == k.action_probs.tolist() and back.items.tolist() == [7, 8, 9]
    row = encode(UserState("v1", None, 1, T0, T0, 0.0, (1, 0, 0, 0, 0, 0), w, 5, k))
    assert row[0] == FORMAT == 3
    v2 = bytes([2]) + encode(UserState("v1", None, 1, T0, T0, 0.0, (1, 0, 0, 0, 0, 0), w, 5))[1:-1]
    old = decode(v2)  # format 2: the same layout without the trailing prediction block
    assert old.last_prediction is None and old.offset == 5 and old.window[0].item_id == "a"
    assert len(row) - len(v2) < 64 and _HEAD.size > 0


def _ev(i, user, ts, action="view", item="i1"):
    return Event(f"e{i}", user, ts, action, item_id=item)


def _one(predictor, event, state):
    res = score_batch(predictor, [event], {event.user_id: state}, LIM)
    return res, res.states[event.user_id], res.predictions[0]


def test_a_stream_whose_predictions_come_true_scores_right_and_one_that_does_not_scores_wrong(predictor):
    items = list(predictor.items.ids)
    horizon = predictor.model.cfg.churn_horizon_s
    res, st, p1 = _one(predictor, _ev(0, "u", T0, item=items[0]), None)
    assert res.online is not None and len(res.online) == 0  # a first event has nothing to score
    best = ACTIONS[int(np.argmax(p1.action_probs))]
    res, st, p2 = _one(predictor, _ev(1, "u", T0 + 5, best, p1.top_items[0][0]), st)
    right = evaluate(res.online, horizon)[predictor.version]
    assert (right.action_correct, right.item_hits, right.item_reciprocal_rank) == (1, 1, 1.0)
    expect = -math.log(float(np.float16(p1.action_probs[ACTION_INDEX[best]])))
    assert right.action_log_loss == pytest.approx(expect, rel=1e-6)
    assert right.calibration[:, 0].sum() == 1  # returned within the horizon
    worst = ACTIONS[int(np.argmin(p2.action_probs))]
    absent = next(i for i in items if i not in {x for x, _ in p2.top_items})
    res, st, _ = _one(predictor, _ev(2, "u", T0 + 5 + horizon + 1, worst, absent), st)
    wrong = evaluate(res.online, horizon)[predictor.version]
    assert (wrong.action_correct, wrong.item_hits, wrong.item_reciprocal_rank) == (0, 0, 0.0)
    assert wrong.calibration[:, 1].sum() == 1  # came back after the horizon: churned
    assert wrong.churn_log_loss == pytest.approx(-math.log(max(p2.churn_probability, 1e-7)), rel=1e-3)


def _totals(predictor, events, batch, states=None):
    states = {} if states is None else states
    total = Totals()
    for s in range(0, len(events), batch):
        chunk = events[s:s + batch]
        res = score_batch(predictor, chunk, {e.user_id: states.get(e.user_id) for e in chunk}, LIM)
        states.update(res.states)
        for t in evaluate(res.online, 1800.0).values():
            for f in ("action_scored", "action_correct", "action_log_loss", "item_scored", "item_hits",
                      "item_reciprocal_rank", "churn_scored", "churn_log_loss"):
                setattr(total, f, getattr(total, f) + getattr(t, f))
            total.calibration += t.calibration
    return total, states


def test_figures_do_not_depend_on_batching_and_replays_are_not_counted_twice(predictor):
    raw, _ = simulated_events(8, 300, seed=4)
    events = [Event(d["event_id"], d["user_id"], d["ts"], d["action"], d.get("item_id"),
                    d.get("category_id"), d.get("price")) for d in raw]
    one, _ = _totals(predictor, events, 1)
    big, states = _totals(predictor, events, 300)
    users = len({e.user_id for e in events})
    assert one.action_scored == big.action_scored == len(events) - users  # each user's first: none
    assert (one.action_correct, one.item_hits) == (big.action_correct, big.item_hits)
    assert one.action_log_loss == pytest.approx(big.action_log_loss, rel=1e-5)
    assert one.item_reciprocal_rank == pytest.approx(big.item_reciprocal_rank, rel=1e-6)
    assert 0 < big.action_correct < big.action_scored and big.item_scored > 0
    again, _ = _totals(predictor, events[-100:], 50, states=dict(states))
    assert again.action_scored == again.churn_scored == 0  # replays: predicted, never scored


def test_metrics_export_per_version_and_cap_the_label_count():
    m = Metrics()
    t = Totals(action_scored=3, action_correct=2, action_log_loss=1.5, item_scored=2, item_hits=1,
               item_reciprocal_rank=0.5, churn_scored=3, churn_log_loss=0.9)
    t.calibration[3, 1] = 2
    t.calibration[0, 0] = 1
    m.add_online({"v1": t})
    g = m.registry.get_sample_value
    assert g("clickstream_online_scored_total", {"model_version": "v1", "kind": "item"}) == 2
    assert g("clickstream_online_action_correct_total", {"model_version": "v1"}) == 2
    assert g("clickstream_online_item_reciprocal_rank_total", {"model_version": "v1"}) == 0.5
    assert g("clickstream_online_churn_calibration_total",
             {"model_version": "v1", "bin": "0.3", "outcome": "churned"}) == 2
    assert g("clickstream_online_churn_calibration_total",
             {"model_version": "v1", "bin": "0.0", "outcome": "returned"}) == 1
    for i in range(40):
        m.add_online({f"x{i}": Totals(action_scored=1)})
    versions = {s.labels["model_version"] for s in m.online_scored.collect()[0].samples}
    assert len(versions) <= 17 and "other" in versions


def test_the_pipeline_counts_each_prediction_once_and_the_sweep_scores_expired_users(predictor):
    """EventPipeline + IdleSweep over a dict table: scored on the next event, not again on a
    replay, and an expired user's last churn prediction scored as churned."""
    import asyncio

    import orjson

    from stream_app.agents import EventPipeline, IdleSweep

    from .test_pipeline import NOW, DictTable, Msg, commit

    horizon = predictor.model.cfg.churn_horizon_s
    table = DictTable(active={0})
    pipe = EventPipeline(metrics=Metrics(), predictor=predictor, table=table,
                         limits=WindowLimits(events=20, seconds=3600.0),
                         dead_letters="dlq", next_action="na", churn="churn", clock=lambda: NOW)

    def msg(i, user, ts):
        v = orjson.dumps({"event_id": f"e{i}", "user_id": user, "ts": ts, "action": "view",
                          "item_id": "i1"})
        return Msg(user.encode(), v, 0, i)

    t = NOW - 5000
    first = [msg(0, "u1", t), msg(1, "u1", t + 10), msg(2, "u2", NOW - 9000)]
    commit(table, pipe.process(first))
    later = [msg(3, "u1", t + 10 + horizon + 5)]  # back after the horizon: churned
    commit(table, pipe.process(later))
    g = pipe.metrics.registry.get_sample_value
    v = predictor.version

    def count(kind):
        return g("clickstream_online_scored_total", {"model_version": v, "kind": kind})

    def outcomes(outcome):
        return sum(g("clickstream_online_churn_calibration_total",
                     {"model_version": v, "bin": f"{b / 10:.1f}", "outcome": outcome}) or 0
                   for b in range(10))

    assert (count("action"), count("item"), count("churn")) == (2, 2, 2)
    assert (outcomes("returned"), outcomes("churned")) == (1, 1)
    pipe.process(later)  # redelivered: replayed, predicted, not scored again
    assert (count("action"), count("churn")) == (2, 2)

    class _Delivery:
        pipeline, in_flight = pipe, set()

    sweep = IdleSweep(app=None, table=table, delivery=_Delivery(), window_s=3600.0, max_future_s=600,
                      metrics=pipe.metrics, forget=lambda row: None, churn_horizon=lambda: horizon)
    assert asyncio.run(sweep.run()) == 1  # u2, idle for longer than the window
    assert count("churn") == 3 and outcomes("churned") == 2 and count("action") == 2
