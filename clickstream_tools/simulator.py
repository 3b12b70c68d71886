"""Storefront simulator: realistic shopper sessions with a known ground truth.

Generation (`generate`) is pure and seeded; `produce` is the only Kafka side effect.

The process, per user (latent engagement e ~ Beta(2, 2)):
- a session starts with a view or a search; the next action follows a funnel Markov chain
  (view -> add_to_cart -> purchase, favourites, removals, searches), with carting and buying
  more likely for engaged users;
- items: revisit one of the user's recent items (shoppers come back to what they just saw), stay in
  the previous item's category, or pick a popular item (Zipf popularity);
- `users` is the number of concurrent shoppers: one who churns is replaced by a new shopper (a
  new id) arriving within `arrival_spread_s`, so a long run keeps a steady population;
- after each event the session continues with probability c(action, e), the next event following
  an exponential gap (mean `session_gap_mean_s`); otherwise the user returns with probability
  r(e) after an exponential gap (mean `return_gap_mean_s`), or churns for good.

So the true probability that a user acts again within `horizon_s` of an event is known exactly:
    p_active = c * (1 - exp(-H/mu_s)) + (1 - c) * r * (1 - exp(-H/mu_r)),  p_churn = 1 - p_active.

Drift (`drift_every_s` > 0): every `drift_every_s` of event time the storefront enters a new
phase, as seasons and campaigns do: a share `drift_strength` of the catalogue swaps popularity
ranks (yesterday's best sellers fade, others rise), a few categories are featured (their items
weigh `FEATURED_BOOST` times more, and searches go to them half the time), and the funnel's
carting and buying rates are scaled by a per-phase factor. Phase 0 is the undrifted storefront
(the same events as without drift, up to the first change). Session and return rates do not
drift, so `p_churn` stays the truth; `history_p_churn` assumes no drift.
"""

from __future__ import annotations

import heapq
import math
import random
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from stream_app.records import ACTIONS

FUNNEL: dict[str, dict[str, float]] = {
    "view": {"view": 0.66, "search": 0.08, "add_to_cart": 0.14, "favorite": 0.06, "purchase": 0.02},
    "search": {"view": 0.85, "search": 0.15},
    "add_to_cart": {"view": 0.42, "purchase": 0.3, "remove_from_cart": 0.1, "add_to_cart": 0.06,
                    "search": 0.12},
    "remove_from_cart": {"view": 0.7, "search": 0.3},
    "favorite": {"view": 0.7, "add_to_cart": 0.2, "search": 0.1},
    "purchase": {"view": 0.6, "search": 0.4},
}
SESSION_START = {"view": 0.75, "search": 0.25}
CONTINUE_BASE = {"view": 0.80, "search": 0.85, "add_to_cart": 0.80, "remove_from_cart": 0.70,
                 "favorite": 0.75, "purchase": 0.35}
WORDS = ("shoes", "dress", "phone", "lamp", "sofa", "mug", "jacket", "watch", "bag", "toy")


@dataclass(frozen=True)
class SimConfig:
    users: int = 1000
    events: int = 10_000
    items: int = 5000
    categories: int = 60
    seed: int = 7
    start_ts: float = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    arrival_spread_s: float = 3600.0  # users' first sessions start within this window
    session_gap_mean_s: float = 40.0
    return_gap_mean_s: float = 4 * 3600.0
    horizon_s: float = 1800.0  # churn horizon: no event within this => churned
    revisit_p: float = 0.3
    invalid_rate: float = 0.0  # fraction of messages replaced by malformed ones (tests, demos)
    drift_every_s: float = 0.0  # > 0: behaviour changes every this many seconds of event time
    drift_strength: float = 0.5  # share of the catalogue whose popularity ranks move per phase


FEATURED_CATEGORIES = 0.1  # share of categories featured in a drifted phase
FEATURED_BOOST = 4.0
FUNNEL_DRIFT = (0.4, 2.0)  # range of the per-phase factor on add_to_cart / purchase / favorite


@dataclass
class _User:
    uid: str
    engagement: float
    recent: list[int]
    last_action: str | None = None
    last_item: int | None = None
    session: int = 0


class Storefront:
    """Catalogue + user population; `events()` yields time-ordered (event, truth) pairs."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        n = cfg.items
        weights = [1.0 / (i + 1) ** 1.05 for i in range(n)]  # Zipf-like popularity
        self.item_category = [self.rng.randrange(cfg.categories) for _ in range(n)]
        self.item_price = [round(math.exp(self.rng.gauss(3.2, 0.9)), 2) for _ in range(n)]
        self.by_category: list[list[int]] = [[] for _ in range(cfg.categories)]
        self.by_category_w: list[list[float]] = [[] for _ in range(cfg.categories)]
        for i, c in enumerate(self.item_category):
            self.by_category[c].append(i)
            self.by_category_w[c].append(weights[i])
        self.items = list(range(n))
        self.base_weights = weights
        self.weights = weights
        self.phase = 0
        self.featured: list[int] = []  # categories on campaign in this phase
        self.funnel_factor: dict[str, float] = {}  # action -> multiplier in this phase

    def enter_phase(self, phase: int) -> None:
        """Re-draw popularity, featured categories and funnel factors for drift phase `phase`
        (phase 0: the undrifted storefront). Deterministic in (seed, phase)."""
        cfg, n = self.cfg, self.cfg.items
        self.phase = phase
        if phase == 0:
            self.weights, self.featured, self.funnel_factor = self.base_weights, [], {}
        else:
            prng = random.Random(cfg.seed * 100_003 + phase)
            rank = list(range(n))  # rank[i]: item i's popularity rank
            moved = prng.sample(range(n), int(round(cfg.drift_strength * n)))
            new_ranks = [rank[i] for i in moved]
            prng.shuffle(new_ranks)
            for i, r in zip(moved, new_ranks, strict=True):
                rank[i] = r
            self.featured = prng.sample(range(cfg.categories),
                                        max(1, int(FEATURED_CATEGORIES * cfg.categories)))
            featured = set(self.featured)
            self.weights = [self.base_weights[rank[i]]
                            * (FEATURED_BOOST if self.item_category[i] in featured else 1.0)
                            for i in range(n)]
            self.funnel_factor = {a: prng.uniform(*FUNNEL_DRIFT)
                                  for a in ("add_to_cart", "purchase", "favorite")}
        self.by_category_w = [[] for _ in range(cfg.categories)]
        for i, c in enumerate(self.item_category):
            self.by_category_w[c].append(self.weights[i])

    @staticmethod
    def continue_p(action: str, e: Any) -> Any:
        """P(the session goes on after `action`); e a float or a numpy array."""
        return np.minimum(0.97, CONTINUE_BASE[action] * (0.75 + 0.3 * e))

    @staticmethod
    def return_p(e: Any) -> Any:
        return 0.15 + 0.8 * e

    @staticmethod
    def action_weights(table: dict[str, float], e: Any) -> dict[str, Any]:
        """Unnormalised P(next action) from a funnel row: engaged users cart and buy more."""
        return {k: p * ((0.5 + e) if k in ("add_to_cart", "purchase") else 1.0) for k, p in table.items()}

    def p_churn(self, action: str, e: Any) -> Any:
        c, r, h = self.continue_p(action, e), self.return_p(e), self.cfg.horizon_s
        active = c * (1 - math.exp(-h / self.cfg.session_gap_mean_s)) + (1 - c) * r * (
            1 - math.exp(-h / self.cfg.return_gap_mean_s))
        return 1.0 - active

    def _pick(self, table: dict[str, float], e: float) -> str:
        w = self.action_weights(table, e)
        if self.funnel_factor:
            w = {k: v * self.funnel_factor.get(k, 1.0) for k, v in w.items()}
        return self.rng.choices(list(w), list(w.values()))[0]

    def _item(self, u: _User) -> int:
        r = self.rng.random()
        if u.recent and r < self.cfg.revisit_p:
            return self.rng.choice(u.recent[-10:])
        if u.last_item is not None and r < self.cfg.revisit_p + 0.45:
            c = self.item_category[u.last_item]
            return self.rng.choices(self.by_category[c], self.by_category_w[c])[0]
        return self.rng.choices(self.items, self.weights)[0]

    def _next_event(self, u: _User, ts: float, new_session: bool) -> dict[str, Any]:
        if new_session or u.last_action is None:
            u.session += 1
            action = self._pick(SESSION_START, u.engagement)
        else:
            action = self._pick(FUNNEL[u.last_action], u.engagement)
        ev: dict[str, Any] = {"event_id": str(uuid.UUID(int=self.rng.getrandbits(128))),
                              "user_id": u.uid, "ts": round(ts, 3), "action": action,
                              "session_id": f"{u.uid}-s{u.session}"}
        if action == "search":
            if self.featured and self.rng.random() < 0.5:
                c = self.rng.choice(self.featured)
            else:
                c = self.rng.randrange(self.cfg.categories)
            ev["query"] = f"{WORDS[c % len(WORDS)]} {c}"
            ev["category_id"] = f"c{c}"
        else:
            if action in ("view", "favorite") or u.last_item is None:
                item = self._item(u)
            else:  # cart, removal and purchase act on the item just looked at
                item = u.last_item
            ev["item_id"] = f"i{item}"
            ev["category_id"] = f"c{self.item_category[item]}"
            ev["price"] = self.item_price[item]
            u.last_item = item
            u.recent.append(item)
            del u.recent[:-20]
        u.last_action = action
        return ev

    def events(self) -> Iterator[tuple[dict[str, Any], dict[str, float]]]:
        """(event dict, truth) in time order; truth = {"p_churn", "engagement"}."""
        cfg, rng = self.cfg, self.rng
        heap: list[tuple[float, int, bool]] = []
        users: list[_User] = []
        for i in range(cfg.users):
            users.append(_User(uid=f"u{i}", engagement=rng.betavariate(2, 2), recent=[]))
            heapq.heappush(heap, (cfg.start_ts + rng.uniform(0, cfg.arrival_spread_s), i, True))
        produced = 0
        while heap and produced < cfg.events:
            ts, i, new_session = heapq.heappop(heap)
            if cfg.drift_every_s > 0:
                phase = max(0, int((ts - cfg.start_ts) // cfg.drift_every_s))
                if phase != self.phase:
                    self.enter_phase(phase)
            u = users[i]
            ev = self._next_event(u, ts, new_session)
            truth = {"p_churn": float(self.p_churn(ev["action"], u.engagement)),
                     "engagement": u.engagement}
            produced += 1
            yield ev, truth
            if rng.random() < float(self.continue_p(ev["action"], u.engagement)):
                heapq.heappush(heap, (ts + rng.expovariate(1 / cfg.session_gap_mean_s), i, False))
            elif rng.random() < self.return_p(u.engagement):
                heapq.heappush(heap, (ts + rng.expovariate(1 / cfg.return_gap_mean_s), i, True))
            else:  # churned for good; a new shopper takes the slot, so traffic stays steady
                users.append(_User(uid=f"u{len(users)}", engagement=rng.betavariate(2, 2), recent=[]))
                arrival = ts + rng.uniform(0, cfg.arrival_spread_s)
                heapq.heappush(heap, (arrival, len(users) - 1, True))


def history_p_churn(events: Iterable[dict[str, Any]], cfg: SimConfig, grid: int = 201) -> np.ndarray:
    """The best any model can do from what the stream shows: P(churn | the user's events so far)
    under the simulator's own process, integrating the unknown engagement e over its posterior
    (a grid on [0, 1], Beta(2, 2) prior). The evidence in each transition: whether the session
    went on (same session_id) or the user came back, and which action followed. Gaps, items and
    a new session's first action do not depend on e. The ground-truth ceiling knows e itself;
    this bound is what a perfect learner of the process could reach, so it tells how much of the
    gap to the ceiling is learnable at all. `events` in time order; returns one p per event."""
    e = (np.arange(grid) + 0.5) / grid
    log_prior = np.log(e) + np.log1p(-e)  # Beta(2, 2), unnormalised
    sim = Storefront(cfg)  # its formulas; the catalogue plays no part
    log_cont = {a: np.log(sim.continue_p(a, e)) for a in CONTINUE_BASE}
    log_end_return = {a: np.log1p(-sim.continue_p(a, e)) + np.log(sim.return_p(e)) for a in CONTINUE_BASE}
    log_next = {}
    for a, row in FUNNEL.items():
        w = sim.action_weights(row, e)
        total = sum(w.values())
        log_next[a] = {b: np.log(v / total) for b, v in w.items()}
    churn_given_e = {a: sim.p_churn(a, e) for a in CONTINUE_BASE}
    post: dict[str, tuple[np.ndarray, str, str]] = {}  # user -> (log posterior, action, session)
    out = []
    for ev in events:
        uid, action, session = ev["user_id"], ev["action"], ev["session_id"]
        prev = post.get(uid)
        if prev is None:
            lp = log_prior
        elif session == prev[2]:
            lp = prev[0] + log_cont[prev[1]] + log_next[prev[1]][action]
        else:
            lp = prev[0] + log_end_return[prev[1]]
        lp = lp - lp.max()
        post[uid] = (lp, action, session)
        w = np.exp(lp)
        out.append(float(w @ churn_given_e[action] / w.sum()))
    return np.array(out)


def corrupt(ev: dict[str, Any], rng: random.Random) -> tuple[bytes | None, bytes]:
    """A malformed message of a kind storefronts really send; returns (key, value)."""
    key: bytes | None = ev["user_id"].encode()
    kind = rng.randrange(7)
    if kind == 6:
        return None, orjson.dumps(ev)  # valid JSON, but produced without a key
    if kind == 0:
        return key, orjson.dumps(ev)[:-3]  # truncated JSON
    bad = dict(ev)
    if kind == 1:
        bad.pop("user_id")
    elif kind == 2:
        bad["action"] = "hover"
    elif kind == 3:
        bad["ts"] = ev["ts"] * 1000  # milliseconds
    elif kind == 4:
        bad["price"] = "cheap"
    else:
        key = b"someone-else"
    return key, orjson.dumps(bad)


def messages(cfg: SimConfig) -> Iterator[tuple[bytes | None, bytes, bool]]:
    """(key, value, valid) Kafka messages for the simulated stream."""
    rng = random.Random(cfg.seed + 1)
    for ev, _ in Storefront(cfg).events():
        if cfg.invalid_rate and rng.random() < cfg.invalid_rate:
            k, v = corrupt(ev, rng)
            yield k, v, False
        else:
            yield ev["user_id"].encode(), orjson.dumps(ev), True


def produce(bootstrap: str, topic: str, cfg: SimConfig, rate: float | None = None,
            on_sent: Any = None, client_kwargs: Mapping[str, Any] | None = None,
            stall_s: float = 15.0) -> dict[str, int]:
    """Send the simulated stream keyed by user; `rate` events/s (None = as fast as possible).
    `client_kwargs`: security settings (Settings.kafka_client_kwargs()). Against a broker that
    stops answering it gives up after `stall_s` without an acknowledgement (BrokerUnavailable),
    instead of spinning in the producer's retries (kafka_clients.Deliveries)."""
    from kafka import KafkaProducer

    from stream_app.kafka_clients import PRODUCER_DEFAULTS, Deliveries, close_producer, connect

    opts = {**PRODUCER_DEFAULTS, "batch_size": 256 * 1024, **(client_kwargs or {})}
    producer = connect(lambda: KafkaProducer(bootstrap_servers=bootstrap, client_id="storefront-simulator",
                                             **opts), bootstrap, "the simulator")
    deliveries = Deliveries(bootstrap, stall_s=stall_s)
    counts = {"valid": 0, "invalid": 0}
    t0 = time.monotonic()
    try:
        for n, (key, value, valid) in enumerate(messages(cfg)):
            if rate:
                while (delay := t0 + n / rate - time.monotonic()) > 0:
                    deliveries.check()
                    time.sleep(min(delay, 0.5))
            deliveries.check()
            deliveries.watch(producer.send(topic, key=key, value=value))
            counts["valid" if valid else "invalid"] += 1
            if on_sent is not None:
                on_sent(key, value, valid)
        deliveries.drain(producer)
    finally:
        close_producer(producer, deliveries)
    return counts


__all__ = ["ACTIONS", "SimConfig", "Storefront", "messages", "produce"]
