"""Per-event cost as the number of tracked users grows (1,000 -> 1,000,000), and bytes of state
per user. State lives in RocksDB (rocksdict, the store Faust's tables use) and goes through the
agent's own path: get -> decode -> score_batch (hot users' hidden states cached) -> encode -> put.
Kafka is left out on purpose: this isolates how state size changes the per-event cost.

    python -m benchmarks.scaling [--quick] --json benchmarks/results/scaling.json
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rocksdict import Rdict

from clickstream_tools.simulator import SimConfig
from models.features import WindowLimits
from stream_app.predictor import Predictor
from stream_app.records import ACTIONS, Event
from stream_app.scoring import score_batch
from stream_app.state import UserState, WindowEvent, decode, encode

from .common import benchmark_args, environment, write_json
from .throughput import make_model


def seed_states(db: Rdict, n: int, version: str, hidden_floats: int, rng: np.random.Generator) -> None:
    """n users with full 20-event windows and a hidden state of the current version."""
    window = tuple(WindowEvent(0, 1.7e9 + i, 9.9, f"i{i}", f"c{i % 60}", i) for i in range(20))
    for u in range(n):
        st = UserState(version, rng.standard_normal(hidden_floats).astype(np.float32), 20, 1.7e9,
                       1.7e9 + 19, 0.0, (20, 0, 0, 0, 0, 0), window)
        db[f"u{u}".encode()] = encode(st)


def run(p: Predictor, db: Rdict, n_users: int, events: int, batch: int,
        rng: np.random.Generator) -> dict[str, Any]:
    lim = WindowLimits(20, 1e12)
    # Zipf-like activity: a few hot users, a long tail (real shops look like this)
    users = np.minimum(rng.zipf(1.2, events) - 1, n_users - 1)
    t0 = time.perf_counter()
    for s in range(0, events, batch):
        chunk = [Event(f"e{s + i}", f"u{u}", 1.8e9 + s + i, ACTIONS[(s + i) % 3 * 2 % 6],
                       f"i{(s + i) % 5000}", "c1", 9.9) for i, u in enumerate(users[s:s + batch])]
        states = {}
        for e in chunk:
            if e.user_id not in states:
                raw = db.get(e.user_id.encode())
                states[e.user_id] = decode(raw) if raw is not None else None
        res = score_batch(p, chunk, states, lim)
        for u, st in res.states.items():
            db[u.encode()] = encode(st)
    dt = time.perf_counter() - t0
    sizes = [len(db[f"u{u}".encode()]) for u in rng.integers(0, n_users, 200)]
    return {"users": n_users, "events": events, "us_per_event": 1e6 * dt / events,
            "events_per_s": events / dt, "state_bytes_per_user_mean": float(np.mean(sizes)),
            "cache_hit_ratio": p.cache.hits / max(p.cache.hits + p.cache.misses, 1)}


def main(argv: list[str] | None = None) -> None:
    ap = benchmark_args(__doc__, "scaling")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--events", type=int, default=30_000)
    args = ap.parse_args(argv)
    env = environment("cpu")
    sizes = [1_000, 10_000, 100_000, 1_000_000] if not args.quick else [1_000, 10_000]
    events = 3000 if args.quick else args.events
    work = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    rng = np.random.default_rng(0)
    make_model(work / "models", SimConfig(), args.hidden)
    rows = []
    try:
        for n in sizes:
            p = Predictor(work / "models", device="cpu", cache_users=100_000)
            db = Rdict(str(work / f"db-{n}"))
            t = time.perf_counter()
            seed_states(db, n, p.version, p.model.cfg.layers * p.model.cfg.hidden, rng)
            seeded = time.perf_counter() - t
            row = run(p, db, n, events, 512, rng)
            row["seed_seconds"] = seeded
            rows.append(row)
            print(f"{n:>9,} users: {row['us_per_event']:.1f} us/event, "
                  f"{row['state_bytes_per_user_mean']:.0f} B/user", flush=True)
            db.close()
            shutil.rmtree(work / f"db-{n}", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base, top = rows[0]["us_per_event"], rows[-1]["us_per_event"]
    write_json(args.json, {
        "benchmark": "scaling", "environment": env, "quick": args.quick,
        "parameters": {"hidden": args.hidden, "events_per_size": events, "batch": 512,
                       "activity": "Zipf(1.2) over users", "window_events": 20},
        "by_users": rows,
        "goals": {"flat_in_users": {"value": top / base, "goal": 1.5, "met": top / base <= 1.5},
                  "state_bytes_per_user": {"value": rows[-1]["state_bytes_per_user_mean"],
                                           "goal": 2048,
                                           "met": rows[-1]["state_bytes_per_user_mean"] <= 2048}},
    })


if __name__ == "__main__":
    main()
