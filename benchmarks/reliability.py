"""Reliability under faults: larger versions of tests/integration/test_faults.py, recorded.

Per scenario: events sent, predictions received, lost (must be 0), duplicated, dead-lettered,
and the time to recover (restart -> first prediction). Scenarios:
  worker_sigkill    a librdkafka producer (CRC32 partitioner) feeds events while the worker is
                    SIGKILLed at random points and restarted; then a clean stop and restart
  broker_sigterm    the broker stopped (SIGTERM) mid-stream and restarted on the same data dir
  broker_sigkill    the same with SIGKILL
  two_workers       two workers of one app, one SIGKILLed: the survivor takes over
  many_users        N distinct users (one event each) through one worker, window 60 s, sweep 1 s:
                    state per user and active users stay within the window's limits

    python -m benchmarks.reliability [--quick] [--users N] --json benchmarks/results/reliability.json

Run from the repository root (the scenarios live in tests/integration/faults.py). Starts its own
brokers; the predictions' correctness is checked against the offline model as in the tests.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from clickstream_tools import broker

from .common import ROOT, benchmark_args, environment, write_json

if str(ROOT) not in sys.path:  # the scenarios are the tests' own, in tests/integration/faults.py
    sys.path.insert(0, str(ROOT))

from tests.integration import faults  # noqa: E402
from tests.modelkit import make_registry  # noqa: E402


def _checked(out: faults.Outcome, registry: Path | None, elapsed: float) -> dict[str, Any]:
    problems = out.problems(registry)
    return out.summary() | {"elapsed_s": round(elapsed, 1),
                            "dead_letter_reasons": dict(out.dlq_reasons()),
                            "problems": {k: len(v) for k, v in problems.items()},
                            "ok": not problems}


def main(argv: list[str] | None = None) -> None:
    ap = benchmark_args(__doc__, "reliability")
    ap.add_argument("--users", type=int, default=None,
                    help="distinct users in the many_users scenario (default 200,000; --quick 20,000)")
    ap.add_argument("--events", type=int, default=None, help="events per fault scenario")
    ap.add_argument("--kills", type=int, default=3, help="worker SIGKILLs in worker_sigkill")
    ap.add_argument("--rate", type=float, default=None, help="events/s offered during faults")
    ap.add_argument("--seed", type=int, default=None, help="kill points (default: random, recorded)")
    ap.add_argument("--only", nargs="*", default=None,
                    help="scenarios to run: worker_sigkill broker_sigterm broker_sigkill "
                         "two_workers many_users")
    ap.add_argument("--device", default="cpu", help="accepted for the shared benchmark protocol")
    args = ap.parse_args(argv)
    quick = args.quick
    events = args.events or (2000 if quick else 20_000)
    users = max(events // 25, 40)
    rate = args.rate or (150.0 if quick else 400.0)
    many = args.users or (20_000 if quick else 200_000)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    only = set(args.only or ["worker_sigkill", "broker_sigterm", "broker_sigkill", "two_workers",
                             "two_workers_no_standby", "many_users"])
    env = environment("cpu")
    work = Path(tempfile.mkdtemp(prefix="bench-reliability-"))
    registry = work / "registry"
    make_registry(registry)
    results: dict[str, Any] = {}
    params = {"events": events, "users": users, "rate_events_per_s": rate, "kills": args.kills,
              "seed": seed, "many_users": many, "partitions": faults.PARTITIONS,
              "producer": faults.DEFAULT_CLIENT}

    def record(name: str, fn: Any) -> None:
        if name not in only:
            return
        t0 = time.monotonic()
        print(f"{name} ...", file=sys.stderr, flush=True)
        try:
            results[name] = fn(t0)
        except Exception as e:  # noqa: BLE001 - one scenario's failure is a result, not the end
            traceback.print_exc()
            results[name] = {"error": repr(e)[:2000], "ok": False}
        print(f"{name}: {results[name]}", file=sys.stderr, flush=True)

    shared = work / "kafka"
    info = broker.up(shared, port=broker.free_port())
    try:
        bs = info.bootstrap

        def worker_sigkill(t0: float) -> dict[str, Any]:
            d = work / "s1"
            d.mkdir()
            out = faults.run_worker_crashes(bs, "r1.", d, registry, users=users, events=events,
                                            kills=args.kills, rate=rate, seed=seed, timeout=600)
            return _checked(out, registry, time.monotonic() - t0)

        def broker_restart(mode: str) -> Any:
            def run(t0: float) -> dict[str, Any]:
                d = work / f"s2-{mode}"
                d.mkdir()
                out = faults.run_broker_restart(d, registry, mode=mode, users=users,
                                                events=events // 2, rate=rate, seed=seed + 1,
                                                timeout=600)
                return _checked(out, registry, time.monotonic() - t0)
            return run

        def two_workers(standby: int) -> Any:
            def run(t0: float) -> dict[str, Any]:  # the same traffic with and without standbys
                d = work / f"s3-standby{standby}"
                d.mkdir()
                out, _ = faults.run_failover(bs, f"r3s{standby}.", d, registry, users=users,
                                             events=events, rate=rate, seed=seed + 2, timeout=600,
                                             standby_replicas=standby)
                return _checked(out, registry, time.monotonic() - t0) | {"standby_replicas": standby}
            return run

        def many_users(t0: float) -> dict[str, Any]:
            d = work / "s6"
            d.mkdir()
            r = faults.run_many_users(bs, "r6.", d, registry, users=many,
                                      timeout=max(600.0, many / 100))
            s = r.summary()
            s["samples"] = len(r.samples)
            s["elapsed_s"] = round(time.monotonic() - t0, 1)
            s["ok"] = (r.worker_alive and s["lost"] == 0
                       and s["peak_state_bytes_per_user"] <= faults.MAX_STATE_BYTES_PER_USER
                       and r.final["active_users"] <= r.bound_active_at_end)
            return s

        record("worker_sigkill", worker_sigkill)
        record("broker_sigterm", broker_restart("sigterm"))
        record("broker_sigkill", broker_restart("sigkill"))
        record("two_workers", two_workers(1))
        record("two_workers_no_standby", two_workers(0))
        record("many_users", many_users)
    finally:
        broker.down(shared)
    write_json(args.json, {"benchmark": "reliability", "environment": env, "parameters": params,
                           "quick": quick, "results": results,
                           "all_ok": all(r.get("ok") for r in results.values())})
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
