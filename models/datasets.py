"""Readers for the benchmark data and for schema-v1 event dicts. Take paths, return arrays.

- Diginetica (CIKM Cup 2016, SR-GNN split): sessions of item ids, no time, no actions.
- Taobao UserBehavior (Alibaba Tianchi): user,item,category,behavior,timestamp.
- Diginetica purchases: the buyers' purchase log, for "buys again within 30 days".
- Event dicts (the stream's schema v1, e.g. from the simulator or a JSON-lines file).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from . import features
from .actions import ACTION_INDEX
from .data import SeqData, Vocab, from_sequences
from .features import SERVING_DEFAULTS, WindowLimits

TAOBAO_ACTIONS = {"pv": "view", "cart": "add_to_cart", "fav": "favorite", "buy": "purchase"}


def read_diginetica(data_dir: Path) -> tuple[list[list[str]], list[tuple[list[str], str]]]:
    """(training sessions, test rows (prefix, target)); ids as strings, oldest click first."""
    train = [line.split() for line in (data_dir / "all_train_seq.tsv").read_text().splitlines()
             if line.strip()]
    test = []
    with open(data_dir / "test.tsv") as fh:
        next(fh)
        for line in fh:
            prefix, target = line.rstrip("\n").split("\t")
            test.append((prefix.split(), target))
    return train, test


def taobao_next_category(path: Path, test_from: float = 0.8
                         ) -> tuple[list[list[str]], list[tuple[list[str], str]]]:
    """Next-category sessions from the Taobao slice, in `read_diginetica`'s shape: a second shop
    for the next-item benchmark, with a small catalogue (~2,800 categories in training against
    Diginetica's 43k items) and a repeat-heavy one (~40% of next categories are already in the
    user's history, against Diginetica's 20%).

    A user's events, oldest first, are one session. Temporal split at the `test_from` quantile of
    event times: the training sessions hold only events before it; a test row is every event at
    or after it that has at least one event before it, with the user's whole history before it
    as the prefix (what the stream would hold). Rows whose target never occurs in training are
    left out, as the SR-GNN preprocessing does for Diginetica."""
    events = read_taobao(path)
    cut = float(np.quantile([e["ts"] for e in events], test_from))
    by_user: dict[str, list[str]] = defaultdict(list)
    before: dict[str, int] = defaultdict(int)  # events of the user before the cut
    for e in events:  # sorted by time
        by_user[e["user_id"]].append(e["category_id"])
        before[e["user_id"]] += e["ts"] < cut
    train = [s[:before[u]] for u, s in by_user.items() if before[u] >= 2]
    known = {c for s in train for c in s}
    test = [(s[:k], s[k]) for u, s in by_user.items()
            for k in range(max(before[u], 1), len(s)) if s[k] in known]
    return train, test


def sessions_to_seqdata(sessions: Iterable[list[str]], items: Vocab) -> SeqData:
    view = ACTION_INDEX["view"]
    rows = [[(view, items.index(i), 0, 0.0, math.nan) for i in s] for s in sessions]
    return from_sequences(rows, has_time=False, end_ts=0.0)


def read_taobao(path: Path) -> list[dict[str, Any]]:
    """Schema-v1-like dicts sorted by time (the file is sorted; ties keep file order)."""
    out = []
    with open(path, newline="") as fh:
        for n, (user, item, cat, behavior, ts) in enumerate(csv.reader(fh)):
            out.append({"event_id": f"tb{n}", "user_id": user, "item_id": item,
                        "category_id": cat, "action": TAOBAO_ACTIONS[behavior], "ts": float(ts)})
    return out


def read_purchases(path: Path) -> list[dict[str, Any]]:
    """Logged-in buyers' orders as purchase events, one per order (its lines share a time, and
    counting them apart would label every multi-item order as "bought again at once").
    Time = order date plus the session-relative timeframe (ms, capped within that day); item =
    the order's first line."""
    orders: dict[str, dict[str, Any]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh, delimiter=";"):
            if row["userId"] == "NA" or row["ordernumber"] in orders:
                continue
            day = datetime.strptime(row["eventdate"], "%Y-%m-%d").replace(tzinfo=UTC)
            # timeframe counts ms from the session's start and can run to months; an order stays
            # on its own date, or the data would seem to run past its real end (2016-06-17) and
            # churn labels near the end would be read as observed when they are not
            ts = day.timestamp() + min(int(row["timeframe"]), 86_399_999) / 1000.0
            orders[row["ordernumber"]] = {
                "event_id": f"order-{row['ordernumber']}", "user_id": row["userId"],
                "item_id": row["itemId"], "action": "purchase", "ts": ts,
                "session_id": row["sessionId"]}
    return sorted(orders.values(), key=lambda e: e["ts"])


def build_vocabs(events: Iterable[Mapping[str, Any]], item_buckets: int, category_buckets: int,
                 min_count: int = 1) -> tuple[Vocab, Vocab]:
    evs = list(events)
    return (Vocab.build((e.get("item_id") for e in evs), item_buckets, min_count),
            Vocab.build((e.get("category_id") for e in evs), category_buckets))


def encode_event(e: Mapping[str, Any], items: Vocab, categories: Vocab) -> tuple:
    price = e.get("price")
    return (ACTION_INDEX[e["action"]], items.index(e.get("item_id")),
            categories.index(e.get("category_id")), float(e["ts"]),
            math.nan if price is None else float(price))


def events_to_seqdata(events: Iterable[Mapping[str, Any]], items: Vocab, categories: Vocab,
                      end_ts: float | None = None, limits: WindowLimits = SERVING_DEFAULTS) -> SeqData:
    """Event dicts in arrival order -> rows the way the stream applies them (models.features):
    replays dropped, a user's events split where an idle pause resets the stream's state. `keys`
    names each row's user (a user may own several rows); `origin` maps events back."""
    by_user: dict[str, list[int]] = defaultdict(list)
    evs = events if isinstance(events, list) else list(events)
    for n, e in enumerate(evs):
        by_user[e["user_id"]].append(n)
    rows: list[list[tuple]] = []
    keys: list[str] = []
    origin: list[int] = []
    next_ts: list[float] = []
    for user, where in by_user.items():
        ts = np.array([float(evs[n]["ts"]) for n in where])
        kept = features.applied(ts, [str(evs[n].get("event_id", n)) for n in where], limits)
        cuts = [0, *features.split_points(ts[kept], limits).tolist(), len(kept)]
        next_ts.extend([*ts[kept[1:]].tolist(), np.nan])
        for a, b in zip(cuts, cuts[1:], strict=False):
            take = [where[int(i)] for i in kept[a:b]]
            rows.append([encode_event(evs[n], items, categories) for n in take])
            keys.append(user)
            origin.extend(take)
    data = from_sequences(rows, has_time=True, end_ts=end_ts, keys=keys, limits=limits)
    data.origin = np.array(origin, np.int64)
    data.next_ts = np.array(next_ts, np.float64)
    return data
