"""The readers against the real files: the facts ../shared/data/README.md states."""

from __future__ import annotations

import collections
from datetime import UTC, datetime

import pytest

from benchmarks.common import DEFAULT_DATA
from models.datasets import read_diginetica, read_purchases, read_taobao


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


def test_purchases_stay_inside_the_logged_period(data):
    ev = read_purchases(data / "diginetica_raw" / "train-purchases.csv")
    first = datetime.fromtimestamp(ev[0]["ts"], UTC).date().isoformat()
    last = datetime.fromtimestamp(ev[-1]["ts"], UTC).date().isoformat()
    assert "2016-01-02" <= first and last <= "2016-06-17"  # the log's real span
    assert len({e["user_id"] for e in ev}) == 4_425  # logged-in buyers
