"""The readers against the real files: the facts ../shared/data/README.md states."""

from __future__ import annotations

import collections
from datetime import UTC, datetime

import pytest

from benchmarks.common import DEFAULT_DATA
from models.datasets import read_diginetica, read_purchases, read_taobao, taobao_next_category


@pytest.fixture(scope="module")
def data():
    if not DEFAULT_DATA.exists():
        pytest.fail(f"benchmark data missing at {DEFAULT_DATA} (../shared/data beside the repo)")
    return DEFAULT_DATA


def test_diginetica_split(data):
    train, test = read_diginetica(data / "diginetica")
    assert len(train) == 186_670 and sum(map(len, train)) == 906_140 and len(test) == 60_858
    share = sum(t in p for p, t in test) / len(test)
    assert share == pytest.approx(0.205, abs=0.001)  # targets already in the prefix


def test_taobao_slice(data):
    ev = read_taobao(data / "taobao_slice" / "UserBehavior.csv")
    c = collections.Counter(e["action"] for e in ev)
    assert len(ev) == 110_300
    assert (c["view"], c["add_to_cart"], c["favorite"], c["purchase"]) == (98_361, 6_063, 3_383, 2_493)
    assert all(a["ts"] <= b["ts"] for a, b in zip(ev, ev[1:], strict=False))


def test_taobao_next_category_splits_by_time_and_keeps_each_users_history(tmp_path):
    rows = [  # user, item, category, behavior, ts: times 1..10, the cut (80% quantile) at 8.2
        ("u1", "i1", "A", "pv", 1), ("u1", "i2", "B", "pv", 2), ("u2", "i3", "A", "pv", 3),
        ("u2", "i4", "C", "cart", 4), ("u1", "i5", "A", "pv", 5), ("u3", "i6", "B", "pv", 6),
        ("u3", "i7", "C", "pv", 7), ("u2", "i8", "B", "pv", 8), ("u1", "i9", "C", "buy", 9),
        ("u3", "i0", "Z", "pv", 10)]
    f = tmp_path / "UserBehavior.csv"
    f.write_text("".join(",".join(map(str, r)) + "\n" for r in rows))
    train, test = taobao_next_category(f)
    # only events before the cut train; u2's and u3's sessions, u1's up to t=5
    assert sorted(train) == [["A", "B", "A"], ["A", "C", "B"], ["B", "C"]]
    # u1's event at t=9 is a test row with its whole history as the prefix; u3's at t=10 has a
    # category training never saw, so no model could rank it: left out
    assert test == [(["A", "B", "A"], "C")]


def test_taobao_next_category_is_the_small_repeat_heavy_shop(data):
    train, test = taobao_next_category(data / "taobao_slice" / "UserBehavior.csv")
    cats = {c for s in train for c in s}
    assert 2_500 < len(cats) <= 3_913 and len(test) > 5_000  # 3,913 in the whole slice
    share = sum(t in p for p, t in test) / len(test)
    assert 0.35 < share < 0.55  # vs Diginetica's 0.205


def test_purchases_stay_inside_the_logged_period(data):
    ev = read_purchases(data / "diginetica_raw" / "train-purchases.csv")
    first = datetime.fromtimestamp(ev[0]["ts"], UTC).date().isoformat()
    last = datetime.fromtimestamp(ev[-1]["ts"], UTC).date().isoformat()
    assert "2016-01-02" <= first and last <= "2016-06-17"  # the log's real span
    assert len({e["user_id"] for e in ev}) == 4_425  # logged-in buyers
