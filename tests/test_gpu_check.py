"""`make gpu-check` on a machine without a GPU: it refuses clearly, and its harness (arguments,
measurements on CPU at tiny sizes, goal evaluation, the JSON) works, so the first GPU run only
has to measure. No CUDA figure is made up here: CPU runs are labelled cpu and never written to
the CUDA results file."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import gpu_check
from benchmarks.gru_step import by_batch_graph
from models.gru import ClickstreamGRU, GRUConfig

TINY = ["--device", "cpu", "--users", "2000", "--batches", "1,4", "--min-seconds", "0.001",
        "--scoring-users", "20", "--scoring-events", "300", "--scoring-batch", "64", "--no-tests"]


def test_without_a_gpu_the_command_stops_with_a_reason_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "cuda.json"
    assert gpu_check.main(["--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "torch.cuda.is_available() is False" in err
    assert "Nothing was measured or written" in err
    assert not out.exists()


def test_arguments_defaults_and_the_cpu_guard():
    a = gpu_check.parse_args([])
    assert a.device == "cuda" and a.json == gpu_check.DEFAULT_JSON and a.users == 1_000_000
    assert 1 in a.batch_sizes and 1024 in a.batch_sizes and a.min_seconds == 0.5
    assert gpu_check.parse_args(["--quick", "--batches", "8"]).batch_sizes == [1, 8, 1024]
    with pytest.raises(SystemExit):  # CPU numbers never land in the CUDA results file
        gpu_check.parse_args(["--device", "cpu"])


def test_harness_on_cpu_writes_every_part_of_the_json(tmp_path):
    out = tmp_path / "harness.json"
    rc = gpu_check.main([*TINY, "--json", str(out)])
    d = json.loads(out.read_text())
    assert rc == 1 and d["all_goals_met"] is False  # not every goal was judged: never a pass
    assert d["benchmark"] == "gru_step_cuda" and d["cuda_measured"] is False
    assert d["environment"]["device"] == "cpu" and d["environment"]["git_sha"]
    rows = d["by_batch"]
    assert {(r["dtype"], r["batch"]) for r in rows} == {(t, b) for t in ("float32", "bfloat16")
                                                       for b in (1, 4, 1024)}
    assert all(r["mode"] == "eager" and r["events_per_s"] > 0 and r["users_in_table"] == 2000
               for r in rows)
    assert [h["history"] for h in d["history"]] == [10, 100]
    goals = {g["name"]: g for g in d["goals"]}
    assert set(goals) == {g.name for g in gpu_check.GOALS}
    assert goals["events_per_s_batch_1024"]["met"] is None  # 2,000 users, not a million
    assert "not judged" in goals["events_per_s_batch_1024"]["note"]
    assert goals["batch_1_step_us"]["measured"] == pytest.approx(
        1e6 * min(r["seconds_per_step"] for r in rows if r["batch"] == 1))
    assert goals["cuda_tests_failed_or_skipped"]["met"] is None and "not_run" in d["cuda_tests"]
    s = d["scoring"]
    assert s["predictions_compared"] == 300 and s["max_abs_diff_vs_cpu"] == 0.0
    assert goals["scoring_max_abs_diff_vs_cpu"]["met"] is True
    assert s["device_run"]["events"] == 300 and s["device_run"]["cache_hits"] > 0
    assert 0 < s["device_run"]["cache_hit_ratio"] <= 1
    assert d["not_covered"]


def test_goal_evaluation_at_and_around_the_targets():
    def judged(**measured):
        return {g["name"]: g["met"] for g in gpu_check.evaluate_goals(measured, 1_000_000)}

    assert judged(events_per_s_batch_1024=30e6, batch_1_step_us=20.0, cuda_tests_failed_or_skipped=0,
                  scoring_max_abs_diff_vs_cpu=1e-4) == dict.fromkeys(judged(), True)
    got = judged(events_per_s_batch_1024=29.9e6, batch_1_step_us=20.5, cuda_tests_failed_or_skipped=1,
                 scoring_max_abs_diff_vs_cpu=2e-4)
    assert set(got.values()) == {False}
    assert judged() == dict.fromkeys(judged(), None)
    small = gpu_check.evaluate_goals({"events_per_s_batch_1024": 40e6}, 100_000)
    assert small[0]["met"] is None and small[0]["measured"] == 40e6


def test_measured_values_take_the_best_mode_and_count_skips_as_failures():
    rows = [
        {"batch": 1, "dtype": "float32", "mode": "eager", "seconds_per_step": 30e-6,
         "events_per_s": 1 / 30e-6},
        {"batch": 1, "dtype": "float32", "mode": "cuda_graph", "seconds_per_step": 12e-6,
         "events_per_s": 1 / 12e-6},
        {"batch": 1, "dtype": "bfloat16", "mode": "cuda_graph", "error": "RuntimeError: capture"},
        {"batch": 1024, "dtype": "bfloat16", "mode": "eager", "seconds_per_step": 1024 / 35e6,
         "events_per_s": 35e6},
    ]
    ok = {"tests": 1, "failures": 0, "errors": 0, "skipped": 0, "returncode": 0}
    m = gpu_check.measured_values(rows, ok, {"max_abs_diff_vs_cpu": 3e-6})
    assert m == {"events_per_s_batch_1024": 35e6, "batch_1_step_us": pytest.approx(12.0),
                 "cuda_tests_failed_or_skipped": 0, "scoring_max_abs_diff_vs_cpu": 3e-6}
    skipped = {**ok, "skipped": 1, "returncode": 0}
    assert gpu_check.measured_values(rows, skipped, None)["cuda_tests_failed_or_skipped"] == 1
    none_ran = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "returncode": 5}
    assert gpu_check.measured_values(rows, none_ran, None)["cuda_tests_failed_or_skipped"] == 1
    assert gpu_check.measured_values([], None, None) == dict.fromkeys(m, None)


def test_junit_counts():
    xml = ('<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" '
           'failures="1" skipped="2" tests="5" time="1.0"></testsuite></testsuites>')
    assert gpu_check.parse_junit(xml) == {"tests": 5, "failures": 1, "errors": 0, "skipped": 2, "passed": 2}


def test_the_test_selection_finds_the_step_equality_test():
    """The pytest selection gpu-check runs really selects the device equality test (here it
    skips, having no GPU; on a GPU machine it must pass)."""
    r = gpu_check.run_cuda_tests()
    assert r["tests"] >= 1, r["output_tail"]
    assert r["failures"] == 0 and r["errors"] == 0
    if not torch.cuda.is_available():
        assert r["skipped"] == r["tests"] and "no CUDA device" in r["output_tail"]


def test_graph_capture_needs_a_gpu():
    cfg = GRUConfig(n_items=50, n_categories=5, emb_dim=16, hidden=16)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        by_batch_graph(ClickstreamGRU(cfg).eval(), torch.device("cpu"), torch.float32, 100, [1], 0.01)


def test_the_fusable_step_computes_what_model_step_does():
    from dataclasses import fields

    from benchmarks.gru_step import fusable_step, random_events

    cfg = GRUConfig(n_items=50, n_categories=6, emb_dim=16, hidden=24, repeat_flag=True,
                    window_attention=True, last_item_readout=True)
    torch.manual_seed(0)
    model = ClickstreamGRU(cfg).eval()
    x = random_events(8, None, cfg, torch.device("cpu"))
    h = torch.randn(1, 8, 24)
    with torch.no_grad():
        a, rq_a, h_a = model.step(x, h)
        b, rq_b, h_b = fusable_step(model)(x, h)
    assert h_b.shape == h_a.shape and torch.allclose(h_a, h_b, atol=1e-6)
    assert torch.allclose(rq_a, rq_b, atol=1e-6)
    for f in fields(a):
        assert torch.allclose(getattr(a, f.name), getattr(b, f.name), atol=1e-6), f.name
