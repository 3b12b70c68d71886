from __future__ import annotations

import collections
import random

import numpy as np
import orjson

from clickstream_tools.simulator import SimConfig, Storefront, corrupt, history_p_churn, messages
from stream_app.records import ACTIONS, InvalidEvent, parse_event


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


def _phase_stats(evs: list[dict]) -> tuple[collections.Counter, collections.Counter, float]:
    items = collections.Counter(e["item_id"] for e in evs if "item_id" in e and e["action"] == "view")
    cats = collections.Counter(e["category_id"] for e in evs if e["action"] == "search")
    carts = sum(e["action"] in ("add_to_cart", "purchase") for e in evs) / len(evs)
    return items, cats, carts


def _total_variation(a: collections.Counter, b: collections.Counter) -> float:
    na, nb = sum(a.values()), sum(b.values())
    return 0.5 * sum(abs(a[k] / na - b[k] / nb) for k in set(a) | set(b))


def test_drift_rotates_popular_items_categories_and_funnel_rates():
    period = 6 * 3600.0
    base = SimConfig(users=800, events=30_000, seed=5, items=2000, categories=30)
    drifting = SimConfig(**{**base.__dict__, "drift_every_s": period, "drift_strength": 1.0})
    calm = [e for e, _ in Storefront(base).events()]
    moved = [e for e, _ in Storefront(drifting).events()]
    cut = base.start_ts + period
    # phase 0 is the undrifted storefront, event for event
    before = [e for e in moved if e["ts"] < cut]
    assert before == calm[:len(before)] and len(before) > 5000
    for ev in moved:
        parse_event(orjson.dumps(ev), ev["user_id"].encode())

    def halves(evs):
        h = [e for e in evs if cut + 600 <= e["ts"] < cut + period]  # phase 1, past the handover
        return _phase_stats([e for e in evs if e["ts"] < cut]), _phase_stats(h), len(h)

    (i0, c0, f0), (i1, c1, f1), n1 = halves(moved)
    (j0, d0, g0), (j1, d1, g1), m1 = halves(calm)
    assert n1 > 5000 and m1 > 5000
    # without drift the two stretches look alike; with drift the best sellers are others
    top = lambda c: {k for k, _ in c.most_common(20)}  # noqa: E731
    assert len(top(j0) & top(j1)) >= 12
    assert len(top(i0) & top(i1)) <= 5
    assert _total_variation(i0, i1) > _total_variation(j0, j1) + 0.2
    # featured categories draw the searches; the calm store's searches stay uniform
    assert _total_variation(c0, c1) > _total_variation(d0, d1) + 0.15
    # the funnel's cart/purchase share moved; the calm store's did not (seed 5: factors drawn
    # in FUNNEL_DRIFT move it by far more than sampling noise)
    assert abs(f1 - f0) > 3 * abs(g1 - g0) and abs(f1 - f0) > 0.01


def test_drift_phases_are_deterministic_and_differ():
    cfg = SimConfig(users=10, events=10, seed=2, items=500, categories=20, drift_every_s=60.0)
    a, b = Storefront(cfg), Storefront(cfg)
    a.enter_phase(3)
    b.enter_phase(3)
    assert a.weights == b.weights and a.featured == b.featured and a.funnel_factor == b.funnel_factor
    b.enter_phase(4)
    assert a.weights != b.weights
    b.enter_phase(0)
    assert b.weights == Storefront(cfg).weights and not b.featured and not b.funnel_factor
