"""The retrain worker (`stream-app retrain`): every cycle reads the recent stream from Kafka,
trains a challenger warm-started from the champion, judges both on the freshest slice and
promotes the challenger only when it is better (models/challenger.py holds that pure part).

Side effects, all here: one Kafka consumer per cycle (assigned partitions, no consumer group,
nothing committed: the retrain worker never moves a stream worker's offsets); the model
registry (a new version, `promote`, and one line per cycle in `cycles.jsonl`); Prometheus
metrics and `/health` on CLICKSTREAM_RETRAIN_WEB_PORT. It is its own process, so training,
on CUDA when present, never blocks a stream worker's event loop.

The training store is the events topic itself: a cycle reads from the first offset whose
timestamp is within `retrain_lookback_s` (offsets_for_times, every partition) to the end offsets
taken when the cycle starts, at most `retrain_max_events` (the newest ones: each partition is
trimmed from its oldest side in proportion to its share). Events are validated by the stream's
own gate (records.parse_event); rejected messages are counted and skipped.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from models.challenger import PRIMARY, Policy, challenge
from models.checkpoint import append_cycle, current_version, load_version, promote, save_version
from models.gru import GRUConfig
from models.train import TrainConfig

from .config import Settings
from .records import InvalidEvent, parse_event

log = logging.getLogger(__name__)
OUTCOMES = ("promoted", "rejected", "failed")
EVAL_METRICS = (*PRIMARY, "action_log_loss")
MIN_WINDOW_EVENTS = 200  # fewer events than this: nothing worth training on, the cycle is rejected


class RetrainMetrics:
    """The retrain worker's Prometheus metrics (names shared with dashboards: see the README)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.cycles = Counter("clickstream_retrain_cycles_total", "Retrain cycles by outcome",
                              ["outcome"], registry=r)
        self.last_run = Gauge("clickstream_retrain_last_run_timestamp_seconds",
                              "Unix time the last cycle ended", registry=r)
        self.last_success = Gauge("clickstream_retrain_last_success_timestamp_seconds",
                                  "Unix time the last cycle that ended without error ended",
                                  registry=r)
        self.duration = Gauge("clickstream_retrain_duration_seconds",
                              "Wall time of the last cycle", registry=r)
        self.eval = Gauge("clickstream_retrain_eval",
                          "Last cycle's step() metrics on the judged slice",
                          ["model", "metric"], registry=r)
        for outcome in OUTCOMES:
            self.cycles.labels(outcome)

    def observe(self, record: dict[str, Any]) -> None:
        self.cycles.labels(record["outcome"]).inc()
        self.last_run.set(record["ended_unix"])
        self.duration.set(record["duration_s"])
        if record["outcome"] != "failed":
            self.last_success.set(record["ended_unix"])
        for model in ("champion", "challenger"):
            values = record.get("metrics", {}).get(model) or {}
            for metric in EVAL_METRICS:
                if metric in values:
                    self.eval.labels(model, metric).set(values[metric])

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


# --- reading the recent stream ----------------------------------------------------------------

def read_recent(settings: Settings, lookback_s: float, max_events: int,
                now: float | None = None, timeout_s: float = 120.0) -> tuple[list[dict], dict]:
    """(valid events sorted by time, a description of the window read)."""
    from kafka import KafkaConsumer, TopicPartition

    from .kafka_clients import connect

    topic = settings.topics.events
    consumer = connect(lambda: KafkaConsumer(
        bootstrap_servers=settings.bootstrap, enable_auto_commit=False, group_id=None,
        client_id="clickstream-retrain", **settings.kafka_client_kwargs()),
        settings.bootstrap, "the retrain consumer")
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise RuntimeError(f"topic {topic} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        end = consumer.end_offsets(tps)
        since_ms = int(((now or time.time()) - lookback_s) * 1000)
        found = consumer.offsets_for_times({tp: since_ms for tp in tps})
        start = {tp: (found[tp].offset if found.get(tp) is not None else end[tp]) for tp in tps}
        total = sum(end[tp] - start[tp] for tp in tps)
        if total > max_events:  # keep the newest, each partition in proportion to its share
            for tp in tps:
                keep = math.ceil(max_events * (end[tp] - start[tp]) / total)
                start[tp] = max(start[tp], end[tp] - keep)
        todo = [tp for tp in tps if end[tp] > start[tp]]
        events: list[dict] = []
        rejected = 0
        if todo:
            consumer.assign(todo)
            for tp in todo:
                consumer.seek(tp, start[tp])
            deadline = time.monotonic() + timeout_s
            while todo and time.monotonic() < deadline:
                for tp, records in consumer.poll(timeout_ms=500, max_records=5000).items():
                    for rec in records:
                        if rec.offset >= end[tp]:
                            continue
                        try:
                            e = parse_event(rec.value, rec.key)
                        except InvalidEvent:
                            rejected += 1
                            continue
                        events.append({k: getattr(e, k) for k in e.__slots__
                                       if getattr(e, k) is not None})
                # transaction markers take offsets too: done when the position reached the end
                todo = [tp for tp in todo if consumer.position(tp) < end[tp]]
            if todo:
                raise TimeoutError(f"could not read {topic} to its end offsets in {timeout_s:.0f}s")
        events.sort(key=lambda e: e["ts"])
        window = {"topic": topic, "since_unix": since_ms / 1000, "events": len(events),
                  "rejected": rejected, "max_events": max_events,
                  "offsets": {str(tp.partition): [start[tp], end[tp]] for tp in tps}}
        return events, window
    finally:
        consumer.close()


# --- one cycle ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class RetrainJob:
    """What a cycle needs besides Settings: how to train, and how to build a first model."""

    train: TrainConfig
    first_model: GRUConfig  # used only when the registry has no champion
    device: str = "auto"


def run_cycle(settings: Settings, job: RetrainJob, metrics: RetrainMetrics | None = None,
              on_promoted: Callable[[str, str], None] | None = None) -> dict[str, Any]:
    """Read, train, judge, decide, record. Never raises: a failure is a cycle outcome.
    `on_promoted(version, reason)` runs after a promotion (the CLI announces it to the fleet on
    the model bus); its failure is recorded as `announce_error`, the promotion stands."""
    started = time.time()
    registry = settings.model_dir
    record: dict[str, Any] = {"started_unix": started, "champion_version": None, "version": None}
    try:
        events, window = read_recent(settings, settings.retrain_lookback_s,
                                     settings.retrain_max_events)
        record["window"] = window
        champion_version = current_version(registry)
        record["champion_version"] = champion_version
        champion = load_version(registry, champion_version) if champion_version else None
        if len(events) < MIN_WINDOW_EVENTS:
            record |= {"outcome": "rejected",
                       "reason": f"only {len(events)} events in the window (< {MIN_WINDOW_EVENTS})"}
        else:
            ch = challenge(events, champion, job.first_model, job.train,
                           Policy(margin=settings.retrain_margin), device=job.device,
                           limits=settings.window_limits())
            record |= {"metrics": ch.record(), "reason": ch.decision.reason}
            if ch.decision.promote:
                t = ch.trained
                data = {"source": "kafka", "window": window, "split": t.split,
                        "events": len(events), "warm_start_from": champion_version,
                        "window_limits": asdict(t.data.limits),
                        "heads_trained": ["next_item", "next_action", "churn"]}
                version = save_version(
                    registry, t.model.cpu(), t.items, t.categories, data,
                    {"test": t.report["test"], "retrain": ch.record(),
                     "training": {k: t.report.get(k) for k in
                                  ("epochs_run", "best_valid_loss", "train_seconds", "device")}},
                    make_current=False)
                promote(registry, version, "retrain", ch.decision.reason, ch.record())
                record |= {"outcome": "promoted", "version": version}
                if on_promoted is not None:
                    try:
                        on_promoted(version, ch.decision.reason)
                    except Exception as e:
                        log.exception("promoted %s, but telling the fleet failed", version)
                        record["announce_error"] = f"{type(e).__name__}: {e}"
            else:
                record["outcome"] = "rejected"
    except Exception as e:  # a failed cycle is recorded and the worker goes on to the next one
        log.exception("retrain cycle failed")
        record |= {"outcome": "failed", "reason": f"{type(e).__name__}: {e}"}
    ended = time.time()
    record |= {"ended_unix": ended, "duration_s": ended - started}
    try:
        append_cycle(registry, record)
    except OSError:
        log.exception("could not record the cycle in %s", registry)
    if metrics is not None:
        metrics.observe(record)
    log.info("retrain cycle %s in %.1fs: %s", record["outcome"], record["duration_s"],
             record.get("reason", ""))
    return record


# --- the long-running worker -------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path.startswith("/metrics"):
            self._reply(200, self.server.metrics.exposition(), CONTENT_TYPE_LATEST)
        elif self.path.startswith("/health"):
            ok = not self.server.stopped.is_set()
            body = {"status": "ok" if ok else "stopped", "last_cycle": self.server.last}
            self._reply(200 if ok else 503, json.dumps(body, default=str).encode(),
                        "application/json")
        else:
            self._reply(404, b"not found\n", "text/plain")

    def _reply(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], metrics: RetrainMetrics) -> None:
        super().__init__(addr, _Handler)
        self.metrics = metrics
        self.stopped = threading.Event()
        self.last: dict[str, Any] | None = None


def serve_forever(settings: Settings, job: RetrainJob, stop: threading.Event,
                  on_promoted: Callable[[str, str], None] | None = None) -> None:
    """Cycle every `retrain_interval_s` (from the end of one to the start of the next) until
    `stop` is set; /metrics and /health meanwhile on the retrain web port."""
    metrics = RetrainMetrics()
    server = _Server((settings.web_host, settings.retrain_web_port), metrics)
    threading.Thread(target=server.serve_forever, name="retrain-http", daemon=True).start()
    log.info("retrain worker: %s -> %s every %.0fs; metrics http://%s:%d/metrics",
             settings.topics.events, settings.model_dir, settings.retrain_interval_s,
             settings.web_host, settings.retrain_web_port)
    try:
        while not stop.is_set():
            rec = run_cycle(settings, job, metrics, on_promoted)
            server.last = {k: rec.get(k) for k in ("outcome", "reason", "version", "ended_unix",
                                                   "announce_error")}
            stop.wait(settings.retrain_interval_s)
    finally:
        server.stopped.set()
        server.shutdown()
        server.server_close()
