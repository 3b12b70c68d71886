"""Two pipeline workers sharing one topic: aggregate events/s, compared with one worker in the
same run, and how Faust split the partitions between them (from each worker's /metrics).

    python -m benchmarks.two_workers [--quick] --json benchmarks/results/two_workers.json
"""

from __future__ import annotations

import os
import re
import tempfile
import time
import urllib.request
from pathlib import Path

from kafka import KafkaConsumer

from clickstream_tools import broker
from clickstream_tools.simulator import SimConfig, messages
from stream_app.admin import ensure_topics

from .common import benchmark_args, environment, write_json
from .throughput import PARTITIONS, end_count, make_model, preload, start_mode, stop


def assigned_partitions(port: int) -> list[int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sorted(int(p) for p in re.findall(r'clickstream_consumer_lag_messages\{partition="(\d+)"\}', text))


def run(bs: str, ns: str, workers: int, msgs: list, model_dir: Path, work: Path,
        limit_s: float) -> dict:
    topic = f"{ns}clickstream.events"
    ensure_topics(bs, {f"{ns}{t}": PARTITIONS for t in ("clickstream.events", "clickstream.events.dlq",
                                                        "predictions.next_action", "predictions.churn")})
    preload(bs, topic, msgs)
    ports = [broker.free_port() for _ in range(workers)]
    procs = [start_mode("pipeline", bs, ns, topic, model_dir, work, i, ports[i])[0]
             for i in range(workers)]
    out = f"{ns}predictions.next_action"
    c = KafkaConsumer(bootstrap_servers=bs)
    series = []
    t0 = time.monotonic()
    split: list[list[int]] = []
    try:
        while time.monotonic() - t0 < limit_s:
            k = end_count(c, out)
            series.append((time.monotonic(), k))
            if k >= len(msgs):
                break
            if not split and k > len(msgs) // 2:  # mid-run: every worker is in the group
                split = [assigned_partitions(p) for p in ports]
            time.sleep(0.25)
    finally:
        c.close()
        for p in procs:
            stop(p)
    n = len(msgs)
    lo = next(s for s in series if s[1] >= 0.1 * n)
    hi = next((s for s in series if s[1] >= 0.9 * n), series[-1])
    return {"workers": workers, "events_per_s": (hi[1] - lo[1]) / max(hi[0] - lo[0], 1e-9),
            "events_done": series[-1][1], "partitions_by_worker": split}


def main(argv: list[str] | None = None) -> None:
    ap = benchmark_args(__doc__, "two_workers")
    ap.add_argument("--events", type=int, default=40_000)
    ap.add_argument("--torch-threads", type=int, default=1, help="per worker, both runs")
    args = ap.parse_args(argv)
    env = environment("cpu")
    # workers sharing cores must not each spin a full torch thread pool (measured: two workers
    # with the default 2 threads each ran at a third of one worker's rate on 2 cores)
    os.environ["CLICKSTREAM_TORCH_THREADS"] = str(args.torch_threads)
    n = 4000 if args.quick else args.events
    work = Path(tempfile.mkdtemp(prefix="bench-two-workers-"))
    info = broker.up(work / "kafka", port=broker.free_port())
    try:
        sim = SimConfig(users=2000, events=n, seed=2)
        msgs = [(k, v) for k, v, _ in messages(sim)]
        make_model(work / "models", sim, 128)
        run_id = f"w{int(time.time())}"
        one = run(info.bootstrap, f"{run_id}a.", 1, msgs, work / "models", work, 300)
        two = run(info.bootstrap, f"{run_id}b.", 2, msgs, work / "models", work, 300)
    finally:
        broker.down(work / "kafka")
    write_json(args.json, {
        "benchmark": "two_workers", "environment": env, "quick": args.quick,
        "parameters": {"events": n, "partitions": PARTITIONS, "hidden": 128,
                       "torch_threads_per_worker": args.torch_threads,
                       "machine_note": "both workers, the broker and this harness share the same cores"},
        "one_worker": one, "two_workers": two,
        "speedup": two["events_per_s"] / one["events_per_s"]})
    print(f"1 worker {one['events_per_s']:.0f}/s; 2 workers {two['events_per_s']:.0f}/s; "
          f"split {two['partitions_by_worker']}")


if __name__ == "__main__":
    main()
