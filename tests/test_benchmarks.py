"""The benchmarks' --quick modes on the real data: they run, and their protocol is sane."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.common import DEFAULT_DATA


def _run(module: str, out: Path, *args: str) -> dict:
    if not DEFAULT_DATA.exists():
        pytest.fail(f"benchmark data missing at {DEFAULT_DATA} (../shared/data beside the repo)")
    r = subprocess.run([sys.executable, "-m", module, "--quick", "--json", str(out), "--device", "cpu",
                        *args], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out.read_text())


def test_next_item_quick(tmp_path):
    d = _run("benchmarks.next_item", tmp_path / "ni.json")
    assert d["evaluated_incrementally"] is True and d["environment"]["git_sha"]
    r = d["results"]
    # the baselines reproduce the published protocol (S-POP 21.06 / POP 0.89 on the full split)
    assert 17 < r["S-POP"]["P@20"] < 26 and r["POP"]["P@20"] < 3
    assert r["clickstream-gru"]["P@20"] > r["POP"]["P@20"]


def test_next_item_quick_on_another_shop(tmp_path):
    """The same command on the Taobao slice's next category: no published table or Diginetica
    goal; the bar there is S-POP and Markov, said per baseline and metric."""
    d = _run("benchmarks.next_item", tmp_path / "nt.json", "--format", "taobao-category")
    assert d["dataset"].startswith("Taobao") and "goal" not in d and "published" not in d
    assert d["test_target_in_prefix_share"] > 0.3  # the repeat-heavy shop
    b, r = d["beats_baselines"], d["results"]
    assert b["S-POP"]["MRR@20"] == (r["clickstream-gru"]["MRR@20"] > r["S-POP"]["MRR@20"])
    assert b["all"] == all(b[x][m] for x in ("S-POP", "Markov") for m in ("P@20", "MRR@20"))
    assert "ablations" not in d or set(d["ablations"]) == {"default"}  # Diginetica's not copied


def test_next_action_quick(tmp_path):
    d = _run("benchmarks.next_action", tmp_path / "na.json")
    assert set(d["results"]) == {"base_rate", "markov_action_gap", "clickstream-gru"}
    assert d["test_positions"] > 100 and "margins_gru_minus_baseline" in d


def test_churn_quick(tmp_path):
    d = _run("benchmarks.churn", tmp_path / "ch.json")
    sim = d["simulated"]["results"]
    assert 0.5 < sim["ground_truth_ceiling"]["auc"] <= 1
    assert "winner_by_auc" in d["diginetica_purchases"]
