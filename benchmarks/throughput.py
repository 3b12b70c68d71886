"""Throughput and latency, side by side, against one real broker (started here).

For each mode (raw, faust_consume, faust_passthrough, naive, pipeline; see benchmarks/modes.py),
one process at a time:
1. max throughput: the mode consumes the same pre-loaded input topic of schema-v1 events from
   the beginning; events/s is the slope of its output count between 10% and 90% of the events
   (start-up excluded). For the pipeline, the worker's per-stage time counters
   (clickstream_stage_seconds_total) and its process CPU time (/proc) are read at those two points:
   the breakdown in microseconds per event, where "faust_and_rest" is the worker's CPU time not
   inside one of our stages (Faust's fetch, per-event stream and commit work, the event loop,
   producer I/O);
2. latency: a fresh topic is fed at half of that mode's maximum rate (and, for the pipeline, at
   90% of it too), once the mode has answered 100 warm-up events; latency is the output record's
   Kafka timestamp minus the input record's (both stamped by producers on this machine at send
   time). The feed runs for a lead-in (5 s) and then the measured window (15 s) without a break
   (where the input holds fewer events than that at the rate, both shrink in proportion):
   p50/p99 are over the events sent after the lead-in (load held steady), and `from_idle` gives
   them over every event fed, the first seconds after the idle worker meets the load included
   (the first second of load after the idle wait is the slowest: the worker's produce round
   trips to the broker are slow then, and fast a moment later). The feeder is
   its own process with a C client (benchmarks/feeder.py); it still shares the 2 cores with the
   broker and the mode: the JSON records the rate it really achieved.

    python -m benchmarks.throughput [--quick] --json benchmarks/results/throughput.json
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from clickstream_tools import broker
from clickstream_tools.simulator import SimConfig, messages
from models.checkpoint import save_version
from models.data import Vocab
from models.gru import ClickstreamGRU, GRUConfig
from stream_app.admin import ensure_topics
from stream_app.config import Settings

from .common import benchmark_args, environment, write_json
from .feeder import write_messages
from .modes import PROGRESS_EVERY

MODES = ("raw", "faust_consume", "faust_passthrough", "naive", "pipeline")
AGENT_STAGES = ("parse", "state_read", "scoring", "encode", "publish", "ack")  # CPU on the loop
PARTITIONS = 8


def make_model(path: Path, cfg: SimConfig, hidden: int, window_readout: bool = False) -> str:
    """A production-sized model over the simulator's catalogue. Weights are random: speed does
    not depend on them. `window_readout`: the next-item head of the Diginetica recipe (`stream-app
    train --window-readout --transitions 30`: attention over the window, the newest item in the
    query, the window's statistics in the repeat gate, and a table of 30 neighbours per item read
    for every window item), with a random table installed at weight 0.15."""
    items = Vocab(tuple(f"i{i}" for i in range(cfg.items)), 1024)
    cats = Vocab(tuple(f"c{i}" for i in range(cfg.categories)), 64)
    gcfg = GRUConfig(n_items=len(items), n_categories=len(cats), emb_dim=hidden, hidden=hidden,
                     repeat_flag=True, gap_buckets=True, window_attention=window_readout,
                     last_item_readout=window_readout, gate_window_stats=window_readout,
                     transition_k=30 if window_readout else 0,
                     transition_decay=0.6 if window_readout else 0.0)
    model = ClickstreamGRU(gcfg).eval()
    if window_readout:
        g = torch.Generator().manual_seed(0)
        k = gcfg.transition_k
        probs = torch.rand(gcfg.item_vocab, k, generator=g)
        probs[0] = 0  # "no item" (the window's empty slots) has no neighbours, as in training
        model.set_transitions(torch.randint(1, 1 + gcfg.n_items, (gcfg.item_vocab, k), generator=g,
                                            dtype=torch.int32),
                              probs / probs.sum(1, keepdim=True).clamp_min(1e-9), weight=0.15)
    return save_version(path, model, items, cats, {"source": "random"}, {})


def preload(bootstrap: str, topic: str, msgs: list[tuple[bytes, bytes]]) -> None:
    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=512 * 1024, acks=1)
    for k, v in msgs:
        p.send(topic, key=k, value=v)
    p.flush()
    p.close()


def end_count(consumer: KafkaConsumer, topic: str) -> int:
    parts = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in parts]
    return sum(consumer.end_offsets(tps).values()) if tps else 0


def start_mode(mode: str, bootstrap: str, ns: str, input_topic: str, model_dir: Path,
               work: Path, instance: int = 0, web_port: int | None = None,
               device: str = "cpu") -> tuple[subprocess.Popen, str]:
    """Returns (process, the topic whose message count measures progress). Instances of the
    pipeline with the same `ns` join one consumer group and share the partitions. `device`: the
    pipeline worker's --device."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log = open(work / f"{ns.strip('.')}-{mode}-{instance}.log", "wb")  # noqa: SIM115 - child owns it
    if mode == "pipeline":
        env |= {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "CLICKSTREAM_NAMESPACE": ns,
                "CLICKSTREAM_APP_ID": f"{ns}pipeline", "CLICKSTREAM_LOG_LEVEL": "warning"}
        cmd = [sys.executable, "-m", "stream_app.cli", "worker", "--model-dir", str(model_dir),
               "--data-dir", str(work / f"{ns}pipeline-{instance}"),
               "--web-port", str(web_port or broker.free_port()), "--device", device]
        out = f"{ns}predictions.next_action"
    else:
        out = f"{ns}out.{mode}"
        cmd = [sys.executable, "-m", "benchmarks.modes", mode, "--bootstrap", bootstrap,
               "--input", input_topic, "--output", out, "--group", f"{ns}{mode}",
               "--web-port", str(web_port or broker.free_port()), "--model-dir", str(model_dir),
               "--data-dir", str(work / f"{ns}{mode}")]
    ensure_topics(bootstrap, {out: PARTITIONS, f"{out}.churn": PARTITIONS})
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, out


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def stage_seconds(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {s.labels["stage"]: s.value for fam in text_string_to_metric_families(text)
            if fam.name == "clickstream_stage_seconds" for s in fam.samples
            if s.name.endswith("_total")}


def breakdown(a: tuple[int, float, dict[str, float]], b: tuple[int, float, dict[str, float]]
              ) -> dict[str, float]:
    """Microseconds per event between two (events done, worker CPU s, stage seconds) readings."""
    n = b[0] - a[0]
    us = {s: 1e6 * (b[2].get(s, 0.0) - a[2].get(s, 0.0)) / n for s in b[2]}
    cpu = 1e6 * (b[1] - a[1]) / n
    out = {s: us.get(s, 0.0) for s in AGENT_STAGES}
    out["faust_and_rest"] = cpu - sum(out.values())
    out["worker_cpu_total"] = cpu
    out["changelog_wait_overlapped"] = us.get("changelog", 0.0)
    return out


def measure_max(bootstrap: str, mode: str, ns: str, input_topic: str, n: int, model_dir: Path,
                work: Path, limit_s: float, device: str = "cpu") -> dict[str, Any]:
    port = broker.free_port()
    proc, out = start_mode(mode, bootstrap, ns, input_topic, model_dir, work, web_port=port,
                           device=device)
    scale = PROGRESS_EVERY if mode == "faust_consume" else 1  # it writes one message per 100
    c = KafkaConsumer(bootstrap_servers=bootstrap)
    series: list[tuple[float, int]] = []
    marks: list[tuple[int, float, dict[str, float]]] = []  # pipeline: readings at 10% and 90%
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < limit_s and proc.poll() is None:
            k = end_count(c, out) * scale
            series.append((time.monotonic(), k))
            if mode == "pipeline" and len(marks) < 2 and k >= (0.1, 0.9)[len(marks)] * n:
                marks.append((k, cpu_seconds(proc.pid), stage_seconds(port)))
            if k >= n:
                break
            time.sleep(0.25)
    finally:
        stop(proc)
        c.close()
    ts = np.array([t for t, _ in series])
    ks = np.array([k for _, k in series])
    done = int(ks[-1]) if len(ks) else 0
    lo, hi = 0.1 * min(done, n), 0.9 * min(done, n)
    i, j = int(np.searchsorted(ks, lo)), int(np.searchsorted(ks, hi))
    rate = float((ks[j] - ks[i]) / (ts[j] - ts[i])) if j < len(ks) and ts[j] > ts[i] else float("nan")
    r: dict[str, Any] = {"events_per_s": rate, "events_done": done, "events_offered": n,
                         "complete": done >= n, "wall_s": float(ts[-1] - t0) if len(ts) else 0.0}
    if len(marks) == 2 and marks[1][0] > marks[0][0]:
        r["us_per_event"] = breakdown(*marks)
    return r


def measure_latency(bootstrap: str, mode: str, ns: str, msgs: list[tuple[bytes, bytes]],
                    rate: float, duration_s: float, model_dir: Path, work: Path,
                    lead_in_s: float = 0.0, device: str = "cpu") -> dict[str, Any]:
    topic = f"{ns}clickstream.events"
    ensure_topics(bootstrap, {topic: PARTITIONS})
    proc, out = start_mode(mode, bootstrap, ns, topic, model_dir, work, device=device)
    warm = 100  # not measured: the mode must be consuming before the clock starts
    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=1, acks=1)
    for k, v in msgs[-warm:]:
        p.send(topic, key=k, value=v)
    p.flush()
    p.close()
    c = KafkaConsumer(bootstrap_servers=bootstrap)
    deadline = time.monotonic() + 120
    while end_count(c, out) < warm and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
    c.close()
    time.sleep(2)
    n = min(len(msgs) - warm, int(rate * (lead_in_s + duration_s)))
    lead_in_s *= n / max(rate * (lead_in_s + duration_s), 1.0)  # a shorter feed: the same share
    feed = work / "feeder-messages.jsonl"
    write_messages(feed, msgs[:n])
    try:
        fed = subprocess.run([sys.executable, "-m", "benchmarks.feeder", "--bootstrap", bootstrap,
                              "--topic", topic, "--messages", str(feed), "--count", str(n),
                              "--rate", str(rate)], check=True, capture_output=True,
                             timeout=120 + 2 * (lead_in_s + duration_s))
        achieved = orjson.loads(fed.stdout.splitlines()[-1])["achieved_events_per_s"]
        sent = record_times(bootstrap, topic, warm + n, timeout=30)
        done = record_times(bootstrap, out, warm + n, timeout=30 + lead_in_s + duration_s)
    finally:
        stop(proc)
    fed_ids = [orjson.loads(v)["event_id"].encode() for _, v in msgs[:n]]
    pairs = np.array([(sent[e], done[e] - sent[e]) for e in fed_ids if e in sent and e in done],
                     dtype=np.float64).reshape(-1, 2) / 1000.0  # (send time, latency) in seconds
    steady = pairs[pairs[:, 0] >= pairs[:, 0].min() + lead_in_s] if len(pairs) else pairs
    sent_steady = steady[:, 0].max() - steady[:, 0].min() if len(steady) > 1 else 0.0
    return {"offered_events_per_s": rate, "achieved_offer_events_per_s": achieved,
            "feeder": "benchmarks.feeder (own process, librdkafka)",
            "events": n, "outputs_seen": len(pairs), "lead_in_s": lead_in_s,
            "measured_events": len(steady), "measured_s": float(sent_steady),
            **percentiles(steady[:, 1]),
            "from_idle": {"events": len(pairs), **percentiles(pairs[:, 1])}}


def percentiles(latencies: np.ndarray) -> dict[str, float | None]:
    if not len(latencies):
        return {"p50_s": None, "p99_s": None}
    return {"p50_s": float(np.percentile(latencies, 50)), "p99_s": float(np.percentile(latencies, 99))}


def record_times(bootstrap: str, topic: str, n: int, timeout: float) -> dict[bytes, int]:
    """event_id -> the record's Kafka timestamp (ms), for the first `n` records of `topic`."""
    c = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    parts = c.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, q) for q in parts]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    out: dict[bytes, int] = {}
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        for recs in c.poll(timeout_ms=500).values():
            for r in recs:
                out.setdefault(orjson.loads(r.value)["event_id"].encode(), r.timestamp)
    c.close()
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in MODES if m in results]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.bar(modes, [results[m]["events_per_s"] for m in modes], color="#4477aa")
    a.set_ylabel("events/s (one process)")
    a.set_title("max throughput")
    p50 = [1000 * (results[m].get("latency", {}).get("p50_s") or 0) for m in modes]
    p99 = [1000 * (results[m].get("latency", {}).get("p99_s") or 0) for m in modes]
    x = np.arange(len(modes))
    b.bar(x - 0.2, p50, 0.4, label="p50")
    b.bar(x + 0.2, p99, 0.4, label="p99")
    b.set_xticks(x, modes)
    b.set_yscale("log")
    b.set_ylabel("event -> output latency (ms)")
    b.set_title("at half of each mode's max")
    b.legend()
    for ax in (a, b):
        ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    ap = benchmark_args(__doc__, "throughput")
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--latency-seconds", type=float, default=15.0)
    ap.add_argument("--window-readout", action="store_true",
                    help="serve the Diginetica recipe's next-item head (stream-app train "
                         "--window-readout --transitions 30)")
    ap.add_argument("--lead-in-seconds", type=float, default=5.0,
                    help="load fed before the latency window opens (reported apart as from_idle)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="the pipeline worker's --device (the other modes never score)")
    args = ap.parse_args(argv)
    if args.quick:
        args.events, args.latency_seconds, args.lead_in_seconds = 6000, 5.0, 1.0
    env = environment(args.device)
    worker = Settings.from_env()
    work = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    info = broker.up(work / "kafka", port=broker.free_port())
    bs = info.bootstrap
    try:
        sim = SimConfig(users=2000, events=args.events, seed=1)
        msgs = [(k, v) for k, v, _ in messages(sim)]
        model_dir = work / "models"
        make_model(model_dir, sim, args.hidden, args.window_readout)
        run = f"b{int(time.time())}."
        input_topic = f"{run}clickstream.events"
        ensure_topics(bs, {input_topic: PARTITIONS, f"{run}clickstream.events.dlq": PARTITIONS,
                           f"{run}predictions.next_action": PARTITIONS,
                           f"{run}predictions.churn": PARTITIONS})
        t = time.monotonic()
        preload(bs, input_topic, msgs)
        print(f"pre-loaded {len(msgs)} events in {time.monotonic() - t:.1f}s", file=sys.stderr)
        results: dict[str, Any] = {}
        for mode in args.modes.split(","):
            ns = run if mode == "pipeline" else f"{run}{mode}."
            limit = 120.0 if mode == "naive" else 300.0
            if args.quick:
                limit /= 4
            r = measure_max(bs, mode, ns, input_topic, len(msgs), model_dir, work, limit, args.device)
            print(f"{mode}: {r['events_per_s']:.0f} events/s", file=sys.stderr)
            results[mode] = r
            if mode == "faust_consume":  # no output per event: no latency to measure
                continue
            top = r["events_per_s"] if r["events_per_s"] == r["events_per_s"] else 20.0
            loads = {"latency": 0.5, "latency_at_90pct": 0.9} if mode == "pipeline" else {"latency": 0.5}
            for key, share in loads.items():
                r[key] = measure_latency(bs, mode, f"{run}{key}-{mode}.", msgs, max(top * share, 10.0),
                                         args.latency_seconds, model_dir, work,
                                         lead_in_s=args.lead_in_seconds, device=args.device)
                print(f"{mode}: {key} {r[key]}", file=sys.stderr)
    finally:
        broker.down(work / "kafka")
    goals = {}
    pipe = results.get("pipeline")
    if pipe and "raw" in results:  # the physical reference, no goal (beyond any Faust agent)
        goals["pipeline_over_raw"] = {"value": pipe["events_per_s"] / results["raw"]["events_per_s"]}
    for ref, goal in (("faust_passthrough", 0.8), ("naive", 5.0)):
        if pipe and ref in results:
            ratio = pipe["events_per_s"] / results[ref]["events_per_s"]
            goals[f"pipeline_over_{ref}"] = {"value": ratio, "goal": goal, "met": ratio >= goal}
    for key, name, goal in (("latency", "pipeline_p99_at_half_load_s", 0.05),
                            ("latency_at_90pct", "pipeline_p99_at_90pct_load_s", 0.25)):
        if pipe and key in pipe:
            p99 = pipe[key]["p99_s"]
            goals[name] = {"value": p99, "goal": goal, "met": p99 is not None and p99 <= goal}
    out = Path(args.json)
    write_json(out, {"benchmark": "throughput", "environment": env, "quick": args.quick,
                     "parameters": {"events": len(msgs), "partitions": PARTITIONS,
                                    "hidden": args.hidden, "users": sim.users,
                                    "latency_seconds": args.latency_seconds,
                                    "lead_in_seconds": args.lead_in_seconds,
                                    "model": "random weights, production size",
                                    "window_readout": args.window_readout,
                                    "pipeline_device": args.device,
                                    # the worker reads these from the environment (CLICKSTREAM_*)
                                    "worker_batching": {k: getattr(worker, k) for k in (
                                        "batch_max", "batch_within_s", "batch_idle_s",
                                        "batch_behind_within_s", "in_flight_batches",
                                        "producer_linger_ms")}},
                     "modes": results, "goals": goals})
    plot(results, out.with_suffix(".png"))
    print(orjson.dumps(goals).decode())


if __name__ == "__main__":
    main()
