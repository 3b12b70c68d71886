"""Every GPU check in one command (`make gpu-check`): the CUDA tests, the GRU step on CUDA, the
scoring path with the device-resident hidden cache, and the goals they are held to.

    python -m benchmarks.gpu_check [--quick] [--json benchmarks/results/gru_step_cuda.json]

1. the CUDA tests (`pytest -m "not integration" -k cuda`: the step == forward equality on CUDA,
   and any test marked `cuda`); a skipped one counts as not passed;
2. `gru_step` on CUDA: events/s by batch size with every user's hidden state gathered from and
   scattered back to a device-resident table of 1M users, eager and as a replayed CUDA graph,
   fp32 and bf16; batch-1 latency;
3. the scoring path (`stream_app.scoring.score_batch` with a `Predictor` on CUDA and its
   `HiddenCache`) over simulated traffic, compared with the same events scored on CPU;
4. writes the JSON with each goal, the value measured and whether it is met.

Without CUDA it stops at once with exit status 2 and says why: it never writes CPU numbers into
the CUDA results. `--device cpu` runs the same harness on CPU to check the harness itself, and
then refuses to write to the CUDA results file.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.gru import ClickstreamGRU, GRUConfig

from .common import ROOT, environment, write_json
from .gru_step import by_batch, by_batch_graph, history

DEFAULT_JSON = "benchmarks/results/gru_step_cuda.json"
GOAL_TABLE_USERS = 1_000_000
CUDA_TEST_ARGS = ["-m", "not integration", "-k", "cuda", "tests"]


@dataclass(frozen=True)
class Goal:
    name: str
    op: str  # ">=" or "<="
    target: float
    unit: str
    what: str


GOALS = [
    Goal("events_per_s_batch_1024", ">=", 30e6, "events/s",
         "GRU step at batch 1,024 including gather/scatter from a 1M-user device table "
         "(best of fp32/bf16, eager/CUDA graph/compiled graph)"),
    Goal("batch_1_step_us", "<=", 20.0, "µs",
         "one event's step, gather/scatter included, until its result is ready (best mode)"),
    Goal("cuda_tests_failed_or_skipped", "<=", 0, "tests",
         "CUDA tests that failed, errored or skipped (at least one must have run)"),
    Goal("scoring_max_abs_diff_vs_cpu", "<=", 1e-4, "probability",
         "scoring path on the device vs on CPU, same events: largest difference in any action "
         "or churn probability"),
]

NOT_COVERED = [
    "a worker with --device cuda whose pipeline throughput is at least the CPU worker's: it "
    "needs a broker beside the GPU; `python -m benchmarks.throughput --device cuda` measures it, "
    "not this command",
]


# --- arguments ------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=DEFAULT_JSON)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: check the harness itself on a machine without a GPU (not the "
                         "CUDA results file)")
    ap.add_argument("--quick", action="store_true", help="short timing windows, smaller tables")
    ap.add_argument("--users", type=int, default=1_000_000, help="users in the device table")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batches", default="1,16,256,1024,4096,16384,65536")
    ap.add_argument("--min-seconds", type=float, default=None,
                    help="timing window per measurement (default 0.5, --quick 0.05)")
    ap.add_argument("--scoring-users", type=int, default=2_000)
    ap.add_argument("--scoring-events", type=int, default=40_000)
    ap.add_argument("--scoring-batch", type=int, default=512)
    ap.add_argument("--no-tests", action="store_true", help="skip the CUDA pytest run")
    ap.add_argument("--compiled-batches", default="1,1024",
                    help="batch sizes also run fused (torch.compile, then a CUDA graph; ~a minute "
                         "of compiling each); '' for none")
    args = ap.parse_args(argv)
    args.batch_sizes = sorted({int(b) for b in args.batches.split(",") if b.strip()} | {1, 1024})
    args.compiled_sizes = sorted({int(b) for b in args.compiled_batches.split(",") if b.strip()})
    if args.min_seconds is None:
        args.min_seconds = 0.05 if args.quick else 0.5
    if args.device == "cpu" and Path(args.json).resolve() == (ROOT / DEFAULT_JSON).resolve():
        ap.error(f"a CPU run of the harness must not write {DEFAULT_JSON}: pass --json elsewhere")
    return args


def cuda_missing_reason() -> str | None:
    """Why CUDA cannot be used here, or None when it can."""
    if torch.cuda.is_available():
        return None
    built = torch.version.cuda
    return (f"torch.cuda.is_available() is False (torch {torch.__version__}, "
            + (f"built for CUDA {built}: no usable NVIDIA GPU or driver on this machine)"
               if built else "a CPU-only build of torch)")
            + "; run `make gpu-check` on a machine with an NVIDIA GPU")


# --- 1. the CUDA tests ----------------------------------------------------------------------
def parse_junit(xml_text: str) -> dict[str, int]:
    """Counts from a pytest --junitxml report."""
    root = ET.fromstring(xml_text)
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for s in suites:
        for k in counts:
            counts[k] += int(s.get(k, 0))
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def run_cuda_tests(args: Sequence[str] = CUDA_TEST_ARGS) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
               f"--junitxml={report}", *args]
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        counts = parse_junit(report.read_text()) if report.exists() else {}
    return {"command": "python -m pytest " + " ".join(args), "returncode": r.returncode,
            **counts, "output_tail": (r.stdout + r.stderr)[-2000:]}


# --- 2. the GRU step ------------------------------------------------------------------------
def step_rows(device: torch.device, users: int, hidden: int, batches: list[int],
              min_s: float, compiled: list[int] | None = None) -> list[dict[str, Any]]:
    cfg = GRUConfig(n_items=5000, n_categories=60, emb_dim=hidden, hidden=hidden, repeat_flag=True)
    model = ClickstreamGRU(cfg).to(device).eval()
    batches = [b for b in batches if b <= users]  # one step per distinct user
    rows: list[dict[str, Any]] = []
    for dtype in (torch.float32, torch.bfloat16):
        rows += by_batch(model, device, dtype, users, batches, min_s)
        if device.type == "cuda":
            rows += by_batch_graph(model, device, dtype, users, batches, min_s)
            rows += by_batch_graph(model, device, dtype, users, [b for b in compiled or [] if b <= users],
                                   min_s, compiled=True)
    return rows


def history_rows(device: torch.device, hidden: int, min_s: float) -> list[dict[str, Any]]:
    cfg = GRUConfig(n_items=5000, n_categories=60, emb_dim=hidden, hidden=hidden, repeat_flag=True)
    model = ClickstreamGRU(cfg).to(device).eval()
    return history(model, device, [10, 100], 1024 if device.type == "cuda" else 16, min_s)


def best_row(rows: list[dict[str, Any]], batch: int) -> dict[str, Any] | None:
    timed_rows = [r for r in rows if r["batch"] == batch and r.get("seconds_per_step") is not None]
    return min(timed_rows, key=lambda r: r["seconds_per_step"]) if timed_rows else None


# --- 3. the scoring path --------------------------------------------------------------------
def make_registry(path: Path, users: int = 200, events: int = 4000, hidden: int = 64) -> str:
    """A small model trained for one epoch on simulated traffic (what it predicts does not
    matter here; that both devices predict the same does)."""
    from clickstream_tools.sources import simulated_events
    from models.checkpoint import save_version
    from models.recipes import train_on_events
    from models.train import TrainConfig

    evs, _ = simulated_events(users, events, seed=3)
    cfg = GRUConfig(n_items=0, n_categories=0, emb_dim=hidden, hidden=hidden, window=20,
                    item_buckets=32, category_buckets=8, repeat_flag=True, gap_buckets=True)
    tr = train_on_events(evs, cfg, TrainConfig(epochs=1, batch_tokens=2048), device="cpu")
    return save_version(path, tr.model, tr.items, tr.categories, {"source": "gpu_check"}, {})


def score_stream(registry: Path, device: str, events: list[dict], batch: int
                 ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Scores `events` in batches through score_batch as the worker does (state rows carried
    from batch to batch). Returns (figures, event_id -> action probs + churn probability)."""
    from models.features import WindowLimits
    from stream_app.predictor import Predictor
    from stream_app.records import Event
    from stream_app.scoring import score_batch

    p = Predictor(registry, device=device)
    limits = WindowLimits(events=20, seconds=1e9)
    evs = [Event(d["event_id"], d["user_id"], d["ts"], d["action"], d.get("item_id"),
                 d.get("category_id"), d.get("price"), d.get("session_id"), d.get("query"))
           for d in events]
    states: dict[Any, Any] = {}
    out: dict[str, np.ndarray] = {}
    seconds = 0.0
    for s in range(0, len(evs), batch):
        chunk = evs[s:s + batch]
        t0 = time.perf_counter()
        res = score_batch(p, chunk, {e.user_id: states.get(e.user_id) for e in chunk}, limits)
        if p.device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        states.update(res.states)
        for pr in res.predictions:
            out[pr.event.event_id] = np.append(np.asarray(pr.action_probs, dtype=np.float64),
                                               pr.churn_probability)
    looked = p.cache.hits + p.cache.misses
    return {"device": str(p.device), "events": len(evs), "batch": batch, "seconds": seconds,
            "events_per_s": len(evs) / seconds if seconds else None,
            "cache_hits": p.cache.hits, "cache_misses": p.cache.misses,
            "cache_hit_ratio": p.cache.hits / looked if looked else None}, out


def scoring_check(device: str, users: int, events: int, batch: int) -> dict[str, Any]:
    from clickstream_tools.sources import simulated_events

    evs, _ = simulated_events(users, events, seed=11)
    with tempfile.TemporaryDirectory() as tmp:
        make_registry(Path(tmp))
        on_dev, got = score_stream(Path(tmp), device, evs, batch)
        on_cpu, ref = score_stream(Path(tmp), "cpu", evs, batch)
    diff = max((float(np.max(np.abs(got[k] - ref[k]))) for k in ref), default=None)
    return {"users": users, "device_run": on_dev, "cpu_run": on_cpu, "max_abs_diff_vs_cpu": diff,
            "predictions_compared": len(ref)}


# --- 4. goals and the JSON ------------------------------------------------------------------
def measured_values(step: list[dict[str, Any]], tests: dict[str, Any] | None,
                    scoring: dict[str, Any] | None) -> dict[str, float | None]:
    b1024, b1 = best_row(step, 1024), best_row(step, 1)
    bad: float | None = None
    if tests is not None and "tests" in tests:
        bad = tests["failures"] + tests["errors"] + tests["skipped"]
        if tests["tests"] == 0 or tests["returncode"] not in (0,):
            bad = max(bad, 1)  # nothing ran, or pytest itself failed: not met
    return {
        "events_per_s_batch_1024": b1024["events_per_s"] if b1024 else None,
        "batch_1_step_us": 1e6 * b1["seconds_per_step"] if b1 else None,
        "cuda_tests_failed_or_skipped": bad,
        "scoring_max_abs_diff_vs_cpu": scoring["max_abs_diff_vs_cpu"] if scoring else None,
    }


def evaluate_goals(measured: dict[str, float | None], users_in_table: int) -> list[dict[str, Any]]:
    """One entry per goal: met is None where nothing was measured, and for the batch-1,024 goal
    when the table held fewer users than the goal names (a --quick or harness run)."""
    out = []
    for g in GOALS:
        v = measured.get(g.name)
        met = None if v is None else (v >= g.target if g.op == ">=" else v <= g.target)
        entry = {"name": g.name, "what": g.what, "target": f"{g.op} {g.target:g}", "unit": g.unit,
                 "measured": v, "met": met}
        if g.name == "events_per_s_batch_1024" and users_in_table < GOAL_TABLE_USERS:
            entry.update(met=None, note=f"table of {users_in_table:,} users, not "
                                        f"{GOAL_TABLE_USERS:,}: not judged")
        out.append(entry)
    return out


def build_report(args: argparse.Namespace, step: list[dict[str, Any]], hist: list[dict[str, Any]],
                 tests: dict[str, Any] | None, scoring: dict[str, Any] | None) -> dict[str, Any]:
    goals = evaluate_goals(measured_values(step, tests, scoring), args.users)
    best = {b: best_row(step, b) for b in (1, 1024)}
    return {
        "benchmark": "gru_step_cuda", "environment": environment(args.device), "quick": args.quick,
        "cuda_measured": args.device == "cuda",
        "parameters": {"hidden": args.hidden, "users_in_table": args.users,
                       "batches": args.batch_sizes, "compiled_batches": args.compiled_sizes,
                       "min_seconds": args.min_seconds,
                       "model": "random weights (step); a one-epoch simulated model (scoring)"},
        "goals": goals,
        "all_goals_met": all(g["met"] is True for g in goals),
        "best": {str(b): ({k: r[k] for k in ("dtype", "mode", "events_per_s", "seconds_per_step")}
                          if r else None) for b, r in best.items()},
        "not_covered": NOT_COVERED,
        "cuda_tests": tests if tests is not None else {"not_run": "--no-tests"},
        "by_batch": step, "history": hist, "scoring": scoring,
    }


def summary(report: dict[str, Any]) -> str:
    lines = [f"device {report['environment'].get('gpu') or report['environment']['device']}"]
    for g in report["goals"]:
        state = {True: "met", False: "NOT met", None: "not measured"}[g["met"]]
        v = g["measured"]
        lines.append(f"  {g['name']}: {v if v is None else f'{v:,.6g}'} {g['unit']} "
                     f"(goal {g['target']}): {state}" + (f" ({g['note']})" if "note" in g else ""))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda":
        reason = cuda_missing_reason()
        if reason:
            print(f"gpu-check: no CUDA device: {reason}. Nothing was measured or written.",
                  file=sys.stderr)
            return 2
    device = torch.device(args.device)
    users = min(args.users, 100_000) if args.quick else args.users
    args.users = users
    tests = None
    if not args.no_tests:
        print("gpu-check: CUDA tests ...", flush=True)
        tests = run_cuda_tests()
        print(f"  passed {tests.get('passed')}, failed {tests.get('failures')}, "
              f"errors {tests.get('errors')}, skipped {tests.get('skipped')}", flush=True)
    print(f"gpu-check: GRU step on {device}, {users:,} users in the table ...", flush=True)
    step = step_rows(device, users, args.hidden, args.batch_sizes, args.min_seconds, args.compiled_sizes)
    hist = [{"device": device.type, **r} for r in history_rows(device, args.hidden, args.min_seconds)]
    print(f"gpu-check: scoring path on {device} vs cpu ...", flush=True)
    scoring = scoring_check(args.device, args.scoring_users, args.scoring_events, args.scoring_batch)
    report = build_report(args, step, hist, tests, scoring)
    write_json(args.json, report)
    print(summary(report))
    print(f"gpu-check: wrote {args.json}")
    return 0 if report["all_goals_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
