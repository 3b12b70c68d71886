"""Scoring without Kafka: waves, equality with the offline forward pass, swaps, the cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clickstream_tools.sources import simulated_events
from models.checkpoint import set_current
from models.features import WindowLimits
from stream_app.predictor import Predictor
from stream_app.records import Event
from stream_app.scoring import score_batch

from .modelkit import make_registry, offline_predictions

LIM = WindowLimits(events=20, seconds=1e9)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    path = tmp_path_factory.mktemp("registry")
    make_registry(path)
    return path


def as_event(d):
    return Event(d["event_id"], d["user_id"], d["ts"], d["action"], d.get("item_id"),
                 d.get("category_id"), d.get("price"), d.get("session_id"), d.get("query"))


def stream(predictor, events, batch=64, states=None):
    states = {} if states is None else states
    preds = {}
    for s in range(0, len(events), batch):
        chunk = [as_event(d) for d in events[s:s + batch]]
        res = score_batch(predictor, chunk, {e.user_id: states.get(e.user_id) for e in chunk}, LIM)
        states.update(res.states)
        for p in res.predictions:
            preds[p.event.event_id] = p
    return preds, states


def test_bursts_of_one_user_in_one_batch_equal_one_event_at_a_time(registry):
    events, _ = simulated_events(5, 400, seed=2)  # few users: many events each per batch
    one, _ = stream(Predictor(registry, device="cpu"), events, batch=1)
    big, _ = stream(Predictor(registry, device="cpu"), events, batch=400)
    for eid, p in one.items():
        np.testing.assert_allclose(big[eid].action_probs, p.action_probs, atol=1e-5)
        assert big[eid].churn_probability == pytest.approx(p.churn_probability, abs=1e-5)


def test_incremental_stream_equals_offline_forward(registry):
    events, _ = simulated_events(60, 1500, seed=9)
    ref = offline_predictions(registry, events, limits=LIM)
    preds, states = stream(Predictor(registry, device="cpu"), events)
    assert len(preds) == len(events)
    for eid, (probs, churn, top) in ref.items():
        p = preds[eid]
        np.testing.assert_allclose(p.action_probs, probs, atol=1e-5)
        assert p.churn_probability == pytest.approx(churn, abs=1e-5)
        np.testing.assert_allclose([s for _, s in p.top_items], top, atol=1e-5)  # ties may reorder
    assert sum(s.n_events for s in states.values()) == len(events)


def test_cache_and_table_bytes_give_the_same_answer(registry):
    events, _ = simulated_events(40, 800, seed=4)
    cached, _ = stream(Predictor(registry, device="cpu"), events)
    no_cache, _ = stream(Predictor(registry, device="cpu", cache_users=0), events)
    tiny, _ = stream(Predictor(registry, device="cpu", cache_users=5), events)
    for eid, p in cached.items():
        np.testing.assert_allclose(no_cache[eid].action_probs, p.action_probs, atol=1e-6)
        np.testing.assert_allclose(tiny[eid].action_probs, p.action_probs, atol=1e-6)


def test_replayed_events_are_predicted_but_not_applied_twice(registry):
    events, _ = simulated_events(20, 300, seed=5)
    p = Predictor(registry, device="cpu")
    _, states = stream(p, events)
    last = {}
    for e in events:
        last[e["user_id"]] = e["event_id"]
    first, _ = stream(Predictor(p.registry, device="cpu"), events)
    again, states2 = stream(p, events[-50:], states=dict(states))
    assert all(x.replayed for x in again.values())
    for x in again.values():  # a replay gets the prediction that followed the user's last event
        latest = first[last[x.event.user_id]]
        np.testing.assert_allclose(x.action_probs, latest.action_probs, atol=1e-5)
    assert {u: s.n_events for u, s in states2.items()} == {u: s.n_events for u, s in states.items()}


def test_weight_swap_rebuilds_hidden_state_from_the_window(registry, tmp_path):
    events, _ = simulated_events(30, 600, seed=6)
    p = Predictor(registry, device="cpu")
    _, states = stream(p, events[:300])
    old = p.version
    new = make_registry(registry, seed=8)  # a second version in the same registry
    set_current(registry, new)
    assert p.wanted_version() == new
    p.install(p.prepare(new))
    assert p.version == new != old and p.wanted_version() is None
    user = events[300]["user_id"]
    res = score_batch(p, [as_event(events[300])], {user: states.get(user)}, LIM)
    st = res.states[events[300]["user_id"]]
    assert st.model_version == new
    had_history = events[300]["user_id"] in states
    assert res.stats["rebuilt"] == int(had_history)
    set_current(registry, old)


def test_the_train_command_builds_the_window_readout_recipe_and_the_stream_serves_it(tmp_path):
    """`stream-app train --window-readout --negatives N`: the Diginetica benchmark's next-item
    recipe, trained by the service's own command into a registry; the stream's incremental
    scoring of that model equals its offline forward pass (the window readout reads the stored
    window, not only the hidden state)."""
    from stream_app.cli import main

    out = tmp_path / "models"
    assert main(["train", "--source", "simulate", "--quick", "--out", str(out), "--window-readout",
                 "--negatives", "64", "--batch-tokens", "512", "--lr-decay", "0.5",
                 "--weight-decay", "1e-5", "--valid-passes", "1", "--bf16"]) == 0
    cfg = Predictor(out, device="cpu").model.cfg
    assert cfg.window_attention and cfg.last_item_readout
    (manifest,) = (out / "versions").glob("*/manifest.json")
    training = json.loads(manifest.read_text())["metrics"]["training"]
    recipe = training["train_config"]
    assert (recipe["sampled_negatives"], recipe["negatives_from"], recipe["batch_tokens"],
            recipe["lr_decay"], recipe["weight_decay"], recipe["valid_passes"], recipe["bf16"]) == \
        (64, "mixed", 512, 0.5, 1e-5, 1, True)
    assert training["validation_passes"]["passes"] == 1  # and the served model is the one after it
    events, _ = simulated_events(40, 800, seed=4)
    ref = offline_predictions(out, events, limits=LIM)
    preds, _ = stream(Predictor(out, device="cpu"), events)
    assert len(preds) == len(events)
    for eid, (probs, churn, top) in ref.items():
        np.testing.assert_allclose(preds[eid].action_probs, probs, atol=1e-5)
        assert preds[eid].churn_probability == pytest.approx(churn, abs=1e-5)
        np.testing.assert_allclose([s for _, s in preds[eid].top_items], top, atol=1e-5)


@pytest.mark.parametrize("flag,value", [("--negatives", "-1"), ("--negatives", "2k"),
                                        ("--batch-tokens", "0"), ("--lr-decay", "0"),
                                        ("--lr-decay", "1.5"), ("--weight-decay", "-1e-5"),
                                        ("--weight-decay", "nan"), ("--valid-passes", "-1")])
def test_the_train_command_refuses_a_recipe_setting_it_cannot_train_with(flag, value, capsys):
    from stream_app.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["train", "--out", "x", flag, value])
    assert exit_.value.code == 2 and f"argument {flag}" in capsys.readouterr().err
