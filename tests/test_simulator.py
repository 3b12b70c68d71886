from __future__ import annotations

import collections
import random

import numpy as np
import orjson

from stream_app.records import ACTIONS, InvalidEvent, parse_event
from stream_app.simulator import SimConfig, Storefront, corrupt, history_p_churn, messages


def test_seeded_and_time_ordered_and_valid():
    cfg = SimConfig(users=100, events=3000, seed=3)
    a = [e for e, _ in Storefront(cfg).events()]
    b = [e for e, _ in Storefront(cfg).events()]
    assert a == b and len(a) == 3000
    assert all(x["ts"] <= y["ts"] for x, y in zip(a, a[1:], strict=False))
    for ev in a:
        parse_event(orjson.dumps(ev), ev["user_id"].encode())


def test_realistic_mix_of_actions_funnels_and_revisits():
    evs = [e for e, _ in Storefront(SimConfig(users=300, events=20000, seed=1)).events()]
    counts = collections.Counter(e["action"] for e in evs)
    assert set(counts) == set(ACTIONS)
    assert counts["view"] > counts["add_to_cart"] > counts["purchase"] > 0
    by_user = collections.defaultdict(list)
    for e in evs:
        by_user[e["user_id"]].append(e)
    # every purchase follows a view or cart of the same item by that user
    revisits = total = 0
    for seq in by_user.values():
        seen: set[str] = set()
        for e in seq:
            if e["action"] == "purchase":
                assert e["item_id"] in seen
            if e["action"] == "view":
                total += 1
                revisits += e["item_id"] in seen
            if "item_id" in e:
                seen.add(e["item_id"])
    assert 0.15 < revisits / total < 0.6
    # returning users (several sessions) and users who stopped (one session only) both exist
    sessions = [len({e["session_id"] for e in s}) for s in by_user.values()]
    assert max(sessions) > 1 and min(sessions) == 1


def test_ground_truth_churn_probability_tracks_engagement():
    shop = Storefront(SimConfig())
    assert 0 < shop.p_churn("view", 0.9) < shop.p_churn("view", 0.1) < 1
    assert shop.p_churn("purchase", 0.5) > shop.p_churn("view", 0.5)


def _ev(user: str, action: str, session: int) -> dict:
    return {"user_id": user, "action": action, "session_id": f"{user}-s{session}"}


def test_history_bound_starts_at_the_prior_and_learns_engagement():
    cfg = SimConfig()
    shop = Storefront(cfg)
    # a first event says nothing about engagement: the prior mean of p_churn under Beta(2, 2)
    e = np.random.default_rng(0).beta(2, 2, 400_000)
    prior_mean = float(np.mean(shop.p_churn("view", e)))
    first = history_p_churn([_ev("a", "view", 1)], cfg)
    assert abs(first[0] - prior_mean) < 2e-3
    # long sessions full of carting and buying: an engaged shopper, less likely to leave
    engaged = [_ev("a", a, 1) for a in ["view", "add_to_cart", "purchase"] * 4 + ["view"]]
    assert history_p_churn(engaged, cfg)[-1] < prior_mean - 0.03
    # on a simulated stream: calibrated (the posterior mean of the truth is the truth's mean) and
    # closer to the truth than the same formula without history (every event a new user)
    pairs = list(Storefront(SimConfig(users=300, events=30_000, seed=3)).events())
    events = [ev for ev, _ in pairs]
    truth = np.array([t["p_churn"] for _, t in pairs])
    bound = history_p_churn(events, cfg)
    no_history = history_p_churn([{**ev, "user_id": str(i)} for i, ev in enumerate(events)], cfg)
    assert abs(bound.mean() - truth.mean()) < 0.005
    assert np.corrcoef(bound, truth)[0, 1] > np.corrcoef(no_history, truth)[0, 1] + 0.05


def test_corrupted_messages_are_all_rejected():
    rng = random.Random(0)
    ev = next(iter(Storefront(SimConfig(users=5, events=5)).events()))[0]
    kinds = set()
    for _ in range(80):
        key, value = corrupt(ev, rng)
        kinds.add(key is None)
        if key is None:
            continue  # the worker dead-letters key-less messages before parsing (agents.py)
        try:
            parse_event(value, key)
        except InvalidEvent:
            continue
        raise AssertionError(f"corrupted message accepted: {value!r}")
    assert kinds == {True, False}


def test_invalid_rate():
    msgs = list(messages(SimConfig(users=50, events=2000, invalid_rate=0.1)))
    bad = sum(not ok for _, _, ok in msgs)
    assert 120 < bad < 280
