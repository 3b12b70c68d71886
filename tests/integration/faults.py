"""Fault scenarios against the real broker, shared by test_faults.py (short runs, asserted) and
benchmarks/reliability.py (larger runs, recorded).

Owns: feeding events from a thread through a producer that is NOT Kafka's murmur2 partitioner
(confluent-kafka's librdkafka, default partitioner `consistent_random` = CRC32) or through
kafka-python (murmur2); SIGKILLing and restarting workers and the broker; following an output
topic to time recovery; reading every prediction and dead letter back and checking them against
the offline model. Side effects: topics, worker and broker processes, files under a work dir.
Nothing here imports pytest: the benchmark runs the same scenarios.
"""

from __future__ import annotations

import collections
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from clickstream_tools import broker
from clickstream_tools.broker import free_port
from clickstream_tools.simulator import SimConfig, Storefront
from stream_app.admin import ensure_topics, topic_specs
from stream_app.config import Settings

from ..modelkit import offline_predictions
from .helpers import WorkerProcess, metric_value, read_topic, start_worker

PARTITIONS = 4
# scenarios 1-3 feed through librdkafka; FAULTS_PRODUCER=kafka-python (murmur2) tells a
# partitioner problem from the fault under test when one fails
DEFAULT_CLIENT = os.environ.get("FAULTS_PRODUCER", "librdkafka")
Message = tuple[bytes | None, bytes]  # (key, value)


# --- input ---------------------------------------------------------------------------------------
def sim_events(users: int, events: int, seed: int, end: float | None = None,
               span: float = 3600.0) -> list[dict]:
    """Simulated events moved to the last `span` seconds before `end` (default: a minute ago),
    order and proportions kept: whatever clock the worker's expiry uses (event time or wall time),
    nobody is idle for a whole default window, and nothing is ahead of the worker's clock."""
    evs = [e for e, _ in Storefront(SimConfig(users=users, events=events, seed=seed)).events()]
    return retime(evs, end if end is not None else time.time() - 60, span)


def retime(events: list[dict], end: float, span: float) -> list[dict]:
    t0, t1 = events[0]["ts"], max(e["ts"] for e in events)
    scale = span / max(t1 - t0, 1e-9)
    return [dict(e, ts=round(end - span + (e["ts"] - t0) * scale, 3)) for e in events]


def keyed(events: Iterable[dict]) -> list[Message]:
    return [(e["user_id"].encode(), orjson.dumps(e)) for e in events]


class Feed(threading.Thread):
    """Sends messages from a thread, `rate` per second (None: as fast as possible), and records
    where each one landed: `placed[i] = (partition, offset)`.

    client "librdkafka": confluent-kafka with its default partitioner (CRC32-based, so most keys
    land in another partition than Kafka's murmur2 would pick), idempotent so retries across a
    broker restart keep per-partition order. client "kafka-python": murmur2, like the Java client."""

    def __init__(self, bootstrap: str, topic: str, msgs: list[Message], rate: float | None = None,
                 client: str = DEFAULT_CLIENT, headers: dict[int, Any] | None = None):
        super().__init__(daemon=True, name=f"feed-{topic}")
        self.bootstrap, self.topic, self.msgs, self.rate = bootstrap, topic, msgs, rate
        self.client, self.headers = client, headers or {}
        self.sent = 0
        self.placed: list[tuple[int, int] | None] = [None] * len(msgs)
        self.errors: list[str] = []

    def run(self) -> None:
        try:
            (self._run_rdkafka if self.client == "librdkafka" else self._run_kafka_python)()
        except Exception as e:  # noqa: BLE001 - reported by finish()
            self.errors.append(repr(e))

    def _pace(self, t0: float, i: int) -> None:
        if self.rate:
            delay = t0 + i / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def _run_rdkafka(self) -> None:
        from confluent_kafka import Producer

        p = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5, "acks": "all",
                      "enable.idempotence": True, "message.timeout.ms": 300_000,
                      "client.id": "faults-librdkafka"})

        def delivered(i: int) -> Callable[[Any, Any], None]:
            def cb(err: Any, msg: Any) -> None:
                if err is not None:
                    self.errors.append(f"message {i}: {err}")
                else:
                    self.placed[i] = (msg.partition(), msg.offset())
            return cb

        t0 = time.monotonic()
        for i, (k, v) in enumerate(self.msgs):
            self._pace(t0, i)
            while True:
                try:
                    p.produce(self.topic, value=v, key=k, headers=self.headers.get(i),
                              on_delivery=delivered(i))
                    break
                except BufferError:  # local queue full (e.g. the broker is down): wait
                    p.poll(0.1)
            p.poll(0)
            self.sent = i + 1
        left = p.flush(300)
        if left:
            self.errors.append(f"{left} messages still undelivered after 300 s")

    def _run_kafka_python(self) -> None:
        p = KafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5, acks="all",
                          max_request_size=4 << 20, client_id="faults-kafka-python")
        futures = []
        t0 = time.monotonic()
        for i, (k, v) in enumerate(self.msgs):
            self._pace(t0, i)
            futures.append(p.send(self.topic, key=k, value=v, headers=self.headers.get(i)))
            self.sent = i + 1
        p.flush()
        for i, f in enumerate(futures):
            md = f.get(timeout=60)
            self.placed[i] = (md.partition, md.offset)
        p.close()

    def finish(self, timeout: float = 320.0) -> None:
        self.join(timeout)
        if self.is_alive() or self.errors or any(x is None for x in self.placed):
            raise RuntimeError(f"feed incomplete ({self.sent}/{len(self.msgs)} sent): {self.errors[:5]}")

    def wait_sent(self, n: int, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while self.sent < n and self.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)


# --- observing outputs ---------------------------------------------------------------------------
class Tail(threading.Thread):
    """Follows a topic from its end at construction; keeps (arrival monotonic time, record)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True, name=f"tail-{topic}")
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                      reconnect_backoff_max_ms=1000)
        parts = self.consumer.partitions_for_topic(topic) or set()
        self.tps = [TopicPartition(topic, p) for p in sorted(parts)]
        self.consumer.assign(self.tps)
        self.consumer.seek_to_end(*self.tps)
        for tp in self.tps:
            self.consumer.position(tp)  # resolve "end" now, not at the first poll
        self.records: list[tuple[float, Any]] = []
        self._halt = threading.Event()
        self.start()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                got = self.consumer.poll(timeout_ms=100)
            except Exception:  # noqa: BLE001 - the broker may be restarting
                time.sleep(0.2)
                continue
            now = time.monotonic()
            for batch in got.values():
                self.records.extend((now, r) for r in batch)

    def first(self, since: float, timeout: float, pred: Callable[[Any], bool] = lambda r: True
              ) -> float | None:
        """Arrival time of the first record after `since` that matches, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            hit = next((t for t, r in list(self.records) if t >= since and pred(r)), None)
            if hit is not None or time.monotonic() > deadline:
                return hit
            time.sleep(0.05)

    def close(self) -> None:
        self._halt.set()
        self.join(5)
        self.consumer.close()


def end_total(bootstrap: str, topic: str) -> int:
    c = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in (c.partitions_for_topic(topic) or ())]
        return sum(c.end_offsets(tps).values()) if tps else 0
    finally:
        c.close()


def assigned_partitions(w: WorkerProcess) -> set[int]:
    """The input partitions a worker holds, from its per-partition lag series."""
    import re

    try:
        text = w.metrics_text()
    except OSError:
        return set()
    return {int(p) for p in re.findall(r'clickstream_consumer_lag_messages\{partition="(\d+)"\}', text)}


def event_id_of(record: Any) -> str:
    return orjson.loads(record.value)["event_id"]


def by_event(records: Iterable[Any]) -> dict[str, list[dict]]:
    """event_id -> its predictions in topic order (a user's predictions share one partition)."""
    out: dict[str, list[dict]] = collections.defaultdict(list)
    for r in records:
        d = orjson.loads(r.value)
        d["_key"] = r.key
        out[d["event_id"]].append(d)
    return out


def original(preds: list[dict]) -> dict | None:
    """The prediction made when the event was applied: the first not flagged replayed."""
    return next((p for p in preds if not p["replayed"]), None)


# --- one scenario's outputs, checked ---------------------------------------------------------------
@dataclass
class Outcome:
    scenario: str
    events: list[dict]  # the valid events sent, in send order
    next_action: list[Any] = field(default_factory=list)  # ConsumerRecords
    churn: list[Any] = field(default_factory=list)
    dead_letters: list[Any] = field(default_factory=list)
    recoveries: list[dict] = field(default_factory=list)  # {"fault": ..., "restart_to_first_prediction_s"}
    logs: list[Path] = field(default_factory=list)

    def collect(self, bootstrap: str, s: Settings, timeout: float) -> None:
        n = len({e["event_id"] for e in self.events})
        self.next_action = read_topic(bootstrap, s.topics.next_action, n, timeout=timeout,
                                      distinct=event_id_of)
        self.churn = read_topic(bootstrap, s.topics.churn, n, timeout=max(timeout / 2, 30),
                                distinct=event_id_of)
        self.dead_letters = read_topic(bootstrap, s.topics.dead_letters, 0, timeout=1)

    def stopped_early(self, bootstrap: str, s: Settings) -> bool:
        """Every input here is valid: if anything was dead-lettered, read what there is and skip
        the long waits for predictions that will never come (the checks report it)."""
        if not end_total(bootstrap, s.topics.dead_letters):
            return False
        self.collect(bootstrap, s, timeout=5)
        return True

    def summary(self) -> dict[str, Any]:
        ids = {e["event_id"] for e in self.events}
        na, ch = by_event(self.next_action), by_event(self.churn)
        both = ids & set(na) & set(ch)
        return {
            "events_sent": len(self.events),
            "predictions_received": len(both),
            "lost": len(ids - both),
            "duplicated": (len(self.next_action) - len(na)) + (len(self.churn) - len(ch)),
            "dead_lettered": len(self.dead_letters),
            "recoveries": self.recoveries,
        }

    def dlq_reasons(self) -> collections.Counter:
        return collections.Counter(dict(r.headers or []).get("x-dlq-reason", b"?").decode()
                                   for r in self.dead_letters)

    def problems(self, registry: Path | None, atol: float = 1e-5) -> dict[str, list]:
        """Everything that breaks the target guarantee; empty lists when it holds. With a
        registry, each event's original prediction is compared with the offline model's (one
        full forward over the user's whole history: the uninterrupted run)."""
        ids = [e["event_id"] for e in self.events]
        na, ch = by_event(self.next_action), by_event(self.churn)
        out: dict[str, list] = collections.defaultdict(list)
        out["dead_letters"] = [(dict(r.headers or []).get("x-dlq-reason"), r.value[:80])
                               for r in self.dead_letters][:20]
        for e in self.events:
            i = e["event_id"]
            for name, got in (("next_action", na), ("churn", ch)):
                preds = got.get(i)
                if not preds:
                    out[f"missing_{name}"].append(i)
                    continue
                if {p["model_version"] for p in preds} != {preds[0]["model_version"]}:
                    out["mixed_versions"].append(i)  # a duplicate must repeat (event_id, version)
                if any(p["user_id"] != e["user_id"] or p["_key"] != e["user_id"].encode()
                       for p in preds):
                    out["wrong_user"].append(i)
                if original(preds) is None:
                    out[f"no_original_{name}"].append(i)
        # per-user order: first predictions follow each user's event order
        first_order: dict[str, list[str]] = collections.defaultdict(list)
        seen: set[str] = set()
        for r in self.next_action:
            d = orjson.loads(r.value)
            if d["event_id"] not in seen:
                seen.add(d["event_id"])
                first_order[d["user_id"]].append(d["event_id"])
        sent: dict[str, list[str]] = collections.defaultdict(list)
        for e in self.events:
            sent[e["user_id"]].append(e["event_id"])
        out["out_of_order_users"] = [u for u, evs in sent.items()
                                     if [x for x in first_order.get(u, []) if x in set(evs)] !=
                                     [x for x in evs if x in seen]][:20]
        if registry is not None and not (out["missing_next_action"] or out["missing_churn"]):
            ref = offline_predictions(registry, self.events)
            for i in ids:
                a, c = original(na[i]), original(ch[i])
                if a is None or c is None:
                    continue
                probs, churn, top = ref[i]
                got_probs = [a["action_probs"][k] for k in a["action_probs"]]
                got_top = [x["score"] for x in a["top_items"]]
                if (len(got_top) != len(top) or not np.allclose(got_probs, probs, atol=atol, rtol=0)
                        or not np.allclose(got_top, top, atol=atol, rtol=0)
                        or abs(c["churn_probability"] - churn) > atol):
                    out["differs_from_offline"].append(i)
        return {k: v for k, v in out.items() if v}


def describe(problems: dict[str, list], outcome: Outcome) -> str:
    lines = [f"{outcome.scenario}: {outcome.summary() | {'recoveries': len(outcome.recoveries)}}",
             f"dead letters by reason: {dict(outcome.dlq_reasons())}"]
    lines += [f"{k}: {len(v)} e.g. {v[:3]}" for k, v in problems.items()]
    for log in outcome.logs[-2:]:
        lines.append(f"--- {log.name} (tail)\n{log.read_text(errors='replace')[-2500:]}")
    return "\n".join(lines)


# --- scenario 1: the worker SIGKILLed mid-stream, restarted; then a clean stop --------------------
def worker_args(registry: Path) -> list[str]:
    return ["--model-dir", str(registry), "--device", "cpu"]


def restart_timed(tail_topic: str, bootstrap: str, start: Callable[[], WorkerProcess], fault: str,
                  timeout: float = 180.0) -> tuple[WorkerProcess, dict]:
    """Start a worker and time restart -> first new prediction (the old one is gone, so any new
    record on the output topic comes from the new one)."""
    tail = Tail(bootstrap, tail_topic)
    try:
        t0 = time.monotonic()
        w = start()
        ready = time.monotonic() - t0
        try:
            hit = tail.first(t0, timeout)
        except BaseException:
            w.stop()  # never leave a worker behind
            raise
    finally:
        tail.close()
    return w, {"fault": fault, "restart_to_ready_s": round(ready, 3),
               "restart_to_first_prediction_s": None if hit is None else round(hit - t0, 3)}


def run_worker_crashes(bootstrap: str, ns: str, work: Path, registry: Path, *, users: int,
                       events: int, kills: int, rate: float, seed: int,
                       env: dict[str, str] | None = None, timeout: float = 240.0) -> Outcome:
    """A librdkafka producer feeds events while the worker is SIGKILLed `kills` times at random
    points and restarted on the same data dir; then a clean SIGTERM stop, the last tenth of the
    events, and a restart. Returns once every prediction is in (or the timeout passes)."""
    rng = random.Random(seed)
    s = Settings(bootstrap=bootstrap, namespace=ns, partitions=PARTITIONS)
    ensure_topics(bootstrap, topic_specs(s))
    evs = sim_events(users, events, seed)
    msgs = keyed(evs)
    cut = len(msgs) * 9 // 10
    out = Outcome("worker_sigkill", evs)
    wenv = {"CLICKSTREAM_PARTITIONS": str(PARTITIONS), **(env or {})}

    port = free_port()

    def start() -> WorkerProcess:  # the same data dir and port: the same worker to Kafka
        w = start_worker(bootstrap, ns, work, env=wenv, extra_args=worker_args(registry),
                         ready_timeout=timeout, web_port=port)
        out.logs.append(w.log_path)
        return w

    w = start()
    feed = Feed(bootstrap, s.topics.events, msgs[:cut], rate=rate)
    feed.start()
    try:
        for point in sorted(rng.uniform(0.15, 0.8) * cut for _ in range(kills)):
            feed.wait_sent(int(point))
            time.sleep(rng.uniform(0, 0.5))  # anywhere inside a batch, a commit, a flush
            w.kill()
            time.sleep(rng.uniform(0, 1.0))
            w, rec = restart_timed(s.topics.next_action, bootstrap, start, "worker_sigkill")
            out.recoveries.append(rec)
        feed.finish()
        if out.stopped_early(bootstrap, s):
            return out
        read_topic(bootstrap, s.topics.next_action, cut, timeout=timeout, distinct=event_id_of)
        code = w.stop()
        rest = Feed(bootstrap, s.topics.events, msgs[cut:])  # sent while no worker runs
        rest.start()
        rest.finish()
        w, rec = restart_timed(s.topics.next_action, bootstrap, start, "worker_sigterm")
        out.recoveries.append(rec | {"clean_stop_exit_code": code})
        out.collect(bootstrap, s, timeout)
    finally:
        w.stop()
    return out


# --- scenario 2: the broker stopped and restarted under a running worker --------------------------
def run_broker_restart(work: Path, registry: Path, *, mode: str, users: int, events: int,
                       rate: float, seed: int, down_s: float = 3.0, timeout: float = 240.0) -> Outcome:
    """Its own broker (the session's stays up): events flow, the broker is stopped with SIGTERM
    (`mode` "sigterm") or SIGKILL ("sigkill") at ~40%, kept down `down_s`, restarted on the same
    data dir and port; the worker must reconnect by itself."""
    data = work / "kafka"
    info = broker.up(data, port=broker.free_port())
    bootstrap, ns = info.bootstrap, "faults."
    s = Settings(bootstrap=bootstrap, namespace=ns, partitions=PARTITIONS)
    w = None
    try:
        ensure_topics(bootstrap, topic_specs(s))
        evs = sim_events(users, events, seed)
        out = Outcome(f"broker_{mode}", evs)
        w = start_worker(bootstrap, ns, work, env={"CLICKSTREAM_PARTITIONS": str(PARTITIONS)},
                         extra_args=worker_args(registry), ready_timeout=timeout)
        out.logs.append(w.log_path)
        feed = Feed(bootstrap, s.topics.events, keyed(evs), rate=rate)
        feed.start()
        feed.wait_sent(int(len(evs) * 0.4))
        if mode == "sigkill":
            broker.kill(data)
        else:
            broker.down(data)
        time.sleep(down_s)
        t0 = time.monotonic()
        broker.restart(data)
        up_s = time.monotonic() - t0
        tail = Tail(bootstrap, s.topics.next_action)
        try:
            hit = tail.first(t0, timeout)
        finally:
            tail.close()
        out.recoveries.append({"fault": f"broker_{mode}", "broker_restart_s": round(up_s, 3),
                               "restart_to_first_prediction_s": None if hit is None
                               else round(hit - t0, 3)})
        feed.finish()
        if not out.stopped_early(bootstrap, s):
            out.collect(bootstrap, s, timeout)
        out.recoveries[-1]["worker_alive"] = w.alive()
        return out
    finally:
        if w is not None:
            w.stop()
        broker.down(data)


# --- scenario 3: two workers, one SIGKILLed ---------------------------------------------------------
def run_failover(bootstrap: str, ns: str, work: Path, registry: Path, *, users: int, events: int,
                 rate: float, seed: int, timeout: float = 240.0,
                 standby_replicas: int | None = None) -> tuple[Outcome, WorkerProcess]:
    """Two workers of one app (own data dirs) share the partitions; one is SIGKILLed at ~40%;
    the survivor must take its partitions over, restoring their state from the changelog (or
    from its warm standby copy, `standby_replicas`; None = the worker's default).
    Returns the outcome and the survivor (stopped), whose log and last partitions the caller reads."""
    s = Settings(bootstrap=bootstrap, namespace=ns, partitions=PARTITIONS)
    ensure_topics(bootstrap, topic_specs(s))
    evs = sim_events(users, events, seed)
    out = Outcome("two_workers_one_killed", evs)
    env = {"CLICKSTREAM_PARTITIONS": str(PARTITIONS)}
    if standby_replicas is not None:
        env["CLICKSTREAM_STANDBY_REPLICAS"] = str(standby_replicas)
    ws = [start_worker(bootstrap, ns, work, env=env, extra_args=worker_args(registry),
                       data_dir=work / f"worker-data-{i}", ready_timeout=timeout) for i in range(2)]
    out.logs += [w.log_path for w in ws]
    survivor, victim = ws
    feed = Feed(bootstrap, s.topics.events, keyed(evs), rate=rate)
    feed.start()
    try:
        feed.wait_sent(int(len(evs) * 0.4))
        deadline = time.monotonic() + timeout  # both must hold partitions before the kill
        while time.monotonic() < deadline and not (assigned_partitions(victim)
                                                   and assigned_partitions(survivor)):
            time.sleep(0.25)
        lost = assigned_partitions(victim)
        tail = Tail(bootstrap, s.topics.next_action)
        t0 = time.monotonic()
        victim.kill()
        try:
            feed.finish()
            where = {e["event_id"]: feed.placed[i][0] for i, e in enumerate(evs)}  # type: ignore[index]
            hit = tail.first(t0, timeout, lambda r: where.get(event_id_of(r)) in lost)
        finally:
            tail.close()
        out.recoveries.append({"fault": "worker_sigkill_peer_takes_over",
                               "moved_partitions": sorted(lost),
                               "kill_to_first_prediction_on_moved_partitions_s":
                                   None if hit is None else round(hit - t0, 3)})
        if not out.stopped_early(bootstrap, s):
            out.collect(bootstrap, s, timeout)
        out.recoveries[-1]["survivor_partitions"] = sorted(assigned_partitions(survivor))
        out.recoveries[-1]["survivor_alive"] = survivor.alive()
    finally:
        for w in ws:
            w.stop()
    return out, survivor


# --- scenario 6: many distinct users passing through ----------------------------------------------
MAX_STATE_BYTES_PER_USER = 2048  # window of 20 events + hidden state (about 1.2 KB at hidden 128)


def many_users_events(users: int, heavy_users: int, heavy_events: int, span: float,
                      end: float, seed: int) -> list[dict]:
    """`users` shoppers with one event each and `heavy_users` with `heavy_events` each (far more
    than a window), spread in time order over `span` seconds before `end`."""
    rng = random.Random(seed)
    rows = [(rng.random(), f"m{i}") for i in range(users)]
    rows += [(rng.random(), f"heavy{h}") for h in range(heavy_users) for _ in range(heavy_events)]
    rows.sort()
    evs = []
    for n, (x, u) in enumerate(rows):
        item = rng.randrange(200)
        evs.append({"event_id": f"mu-{seed}-{n}", "user_id": u, "ts": round(end - span + x * span, 3),
                    "action": "view", "item_id": f"i{item}", "category_id": f"c{item % 20}",
                    "price": 10.0})
    return evs


@dataclass
class ManyUsers:
    events: int
    users: int
    predictions_received: int
    samples: list[dict]  # (active users, state bytes) over time, from /metrics
    final: dict[str, float]
    bound_active_at_end: int  # users whose last event lies within a window of their partition's clock
    worker_alive: bool
    log: Path

    def summary(self) -> dict[str, Any]:
        peak = max((x["state_bytes"] / max(x["active_users"], 1) for x in self.samples), default=0.0)
        return {"events_sent": self.events, "users": self.users,
                "predictions_received": self.predictions_received,
                "lost": self.events - self.predictions_received,
                "peak_active_users": max((x["active_users"] for x in self.samples), default=0),
                "peak_state_bytes": max((x["state_bytes"] for x in self.samples), default=0),
                "peak_state_bytes_per_user": round(peak, 1), "final": self.final,
                "bound_active_at_end": self.bound_active_at_end}


def run_many_users(bootstrap: str, ns: str, work: Path, registry: Path, *, users: int,
                   heavy_users: int = 20, heavy_events: int = 60, window_s: float = 60.0,
                   seed: int = 6, timeout: float = 300.0) -> ManyUsers:
    s = Settings(bootstrap=bootstrap, namespace=ns, partitions=PARTITIONS)
    ensure_topics(bootstrap, topic_specs(s))
    span = max(2 * 3600.0, users / 10)
    evs = many_users_events(users, heavy_users, heavy_events, span, time.time() - 120, seed)
    env = {"CLICKSTREAM_PARTITIONS": str(PARTITIONS), "CLICKSTREAM_WINDOW_EVENTS": "20",
           "CLICKSTREAM_WINDOW_SECONDS": str(window_s), "CLICKSTREAM_SWEEP_INTERVAL_S": "1"}
    w = start_worker(bootstrap, ns, work, env=env, extra_args=worker_args(registry),
                     ready_timeout=timeout)
    samples: list[dict] = []

    def sample() -> dict[str, float]:
        text = w.metrics_text()
        got = {k: metric_value(text, f"clickstream_{k}") or 0.0
               for k in ("active_users", "state_bytes", "expired_users_total")}
        samples.append(got)
        return got

    try:
        feed = Feed(bootstrap, s.topics.events, keyed(evs), client="kafka-python")
        feed.start()
        done = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sample()
            done = end_total(bootstrap, s.topics.next_action)
            if done >= len(evs) and not feed.is_alive():
                break
            time.sleep(1.0)
        feed.finish()
        # each user's partition clock is at most the newest event time in that partition
        clock: dict[int, float] = {}
        last: dict[str, tuple[float, int]] = {}
        for i, e in enumerate(evs):
            part = feed.placed[i][0]  # type: ignore[index]
            clock[part] = max(clock.get(part, 0.0), e["ts"])
            last[e["user_id"]] = (e["ts"], part)
        bound = sum(1 for ts, part in last.values() if ts >= clock[part] - window_s)
        end = time.monotonic() + 60  # the sweep runs every second: wait for it to settle
        final = sample()
        users = len(last)
        while time.monotonic() < end and (final["active_users"] > bound
                                          or final["expired_users_total"] < users - bound):
            time.sleep(1.0)
            final = sample()
        # reading back is the slow part at a million (kafka-python + JSON): scale its wait
        received = len({event_id_of(r) for r in read_topic(bootstrap, s.topics.next_action,
                                                           len(evs), timeout=max(60.0, len(evs) / 2000),
                                                           distinct=event_id_of)})
        return ManyUsers(len(evs), len(last), received, samples, final, bound, w.alive(), w.log_path)
    finally:
        w.stop()
