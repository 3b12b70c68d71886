"""The registry for operators: promotion history, rollback, verification (pure, no broker)."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from models.checkpoint import (
    CheckpointError,
    append_cycle,
    current_version,
    promote,
    read_cycles,
    read_history,
    rollback,
    save_version,
    show_version,
    version_summaries,
)
from models.data import Vocab
from models.gru import ClickstreamGRU, GRUConfig

CFG = GRUConfig(n_items=10, n_categories=3, emb_dim=8, hidden=8, item_buckets=4,
                category_buckets=2)
ITEMS, CATS = Vocab(tuple(f"i{i}" for i in range(10)), 4), Vocab(("a", "b", "c"), 2)


def _version(registry, seed: int) -> str:
    torch.manual_seed(seed)
    return save_version(registry, ClickstreamGRU(CFG), ITEMS, CATS, {"source": "test"},
                        {"seed": seed}, make_current=False)


def test_promote_records_who_and_why_and_rollback_walks_back(tmp_path):
    a, b, c = (_version(tmp_path, s) for s in range(3))
    assert current_version(tmp_path) is None
    promote(tmp_path, a, "operator:ann", "first model")
    with pytest.raises(CheckpointError, match="already in service"):
        promote(tmp_path, a, "operator:ann", "twice")
    promote(tmp_path, b, "retrain", "hit@20 +0.05", {"challenger": {"item_hit_at_20": 0.3}})
    promote(tmp_path, c, "operator:bob", "campaign model")
    assert current_version(tmp_path) == c
    h = read_history(tmp_path)
    assert [(e["version"], e["previous"], e["actor"]) for e in h] == [
        (a, None, "operator:ann"), (b, a, "retrain"), (c, b, "operator:bob")]
    assert h[1]["metrics"]["challenger"]["item_hit_at_20"] == 0.3 and h[1]["reason"] == "hit@20 +0.05"
    # each rollback goes one promotion further back, and is itself recorded
    e = rollback(tmp_path, "operator:ann", "c is bad")
    assert (e["kind"], e["version"], e["previous"]) == ("rollback", b, c)
    assert current_version(tmp_path) == b
    rollback(tmp_path, "operator:ann", "b is bad too")
    assert current_version(tmp_path) == a
    with pytest.raises(CheckpointError, match="nothing to roll back"):
        rollback(tmp_path, "operator:ann", "again")
    assert current_version(tmp_path) == a
    assert [e["kind"] for e in read_history(tmp_path)] == ["promote"] * 3 + ["rollback"] * 2
    # a promotion after rollbacks starts a new line of service
    promote(tmp_path, c, "operator:bob", "fixed")
    rollback(tmp_path, "operator:bob", "not fixed")
    assert current_version(tmp_path) == a


def test_rollback_reaches_a_first_version_made_current_without_history(tmp_path):
    first = save_version(tmp_path, ClickstreamGRU(CFG), ITEMS, CATS, {}, {})  # CURRENT by default
    second = _version(tmp_path, 1)
    promote(tmp_path, second, "retrain", "better")
    rollback(tmp_path, "operator:ann", "worse online")
    assert current_version(tmp_path) == first


def test_promote_refuses_broken_versions_and_keeps_current(tmp_path):
    good, torn = (_version(tmp_path, s) for s in range(2))
    promote(tmp_path, good, "operator:ann", "ok")
    w = tmp_path / "versions" / torn / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:-4] + b"XXXX")
    with pytest.raises(CheckpointError, match="checksum"):
        promote(tmp_path, torn, "operator:ann", "try")
    # finite-weights check: rewrite a version with a NaN and a matching checksum
    model = ClickstreamGRU(CFG)
    with torch.no_grad():
        model.action_head.weight[0, 0] = float("nan")
    bad = save_version(tmp_path, model, ITEMS, CATS, {}, {}, make_current=False)
    with pytest.raises(CheckpointError, match="non-finite"):
        promote(tmp_path, bad, "operator:ann", "try")
    with pytest.raises(CheckpointError, match="no version|no manifest"):
        promote(tmp_path, "nope", "operator:ann", "try")
    assert current_version(tmp_path) == good
    assert len(read_history(tmp_path)) == 1


def test_concurrent_promotions_each_leave_one_whole_line(tmp_path):
    vs = [_version(tmp_path, s) for s in range(12)]
    threads = [threading.Thread(target=promote, args=(tmp_path, v, f"operator:{i}", "race"))
               for i, v in enumerate(vs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert len(lines) == 12 and all(json.loads(x)["reason"] == "race" for x in lines)
    h = read_history(tmp_path)
    # the lock serialises read-CURRENT and write-CURRENT: each entry's previous is the one before
    assert all(x["previous"] == y["version"] for y, x in zip(h, h[1:], strict=False))
    assert h[-1]["version"] == current_version(tmp_path)


def test_list_show_and_cycles(tmp_path):
    a, b = _version(tmp_path, 0), _version(tmp_path, 1)
    promote(tmp_path, a, "operator:ann", "first")
    rows = version_summaries(tmp_path)
    assert [r["version"] for r in rows] == sorted([a, b])
    assert {r["version"]: r["current"] for r in rows} == {a: True, b: False}
    assert next(r for r in rows if r["version"] == a)["promoted_unix"]
    s = show_version(tmp_path, a)
    assert s["current"] and s["vocab_sizes"]["items"] == 10 and "vocab" not in s
    assert [e["actor"] for e in s["history"]] == ["operator:ann"]
    with pytest.raises(CheckpointError):
        show_version(tmp_path, "nope")
    append_cycle(tmp_path, {"outcome": "rejected", "reason": "too few events"})
    (tmp_path / "cycles.jsonl").open("a").write('{"torn')  # a crash mid-line is skipped
    assert [c["outcome"] for c in read_cycles(tmp_path)] == ["rejected"]
