"""`stream-app demo`: a broker, a worker, a drifting storefront simulator and the retrain
worker, shown live: events/s, event-to-prediction latency, the latest predictions, online
accuracy by model version, dead letters by reason, retrain cycles and promotions as they happen
(a `rich` live view on a terminal, a compact line every few seconds otherwise; demo_view.py
holds what is shown, from the workers' /metrics and the prediction topics).

The worker and the retrain worker serve and train from copies of `--model-dir` in the demo's work
folder (its promotions and cycles.jsonl stay there; `--model-dir` is only read, or written once
by the first run's training). A promotion reaches the stream worker over the model bus, as on a
fleet. With `--replay` no retrain worker is started (its champion was trained on the
simulator's catalogue).

Side effects: starts the child processes and stops all of them on Ctrl-C, SIGTERM, SIGHUP (the
terminal closed), or when any of them dies, then says where the logs are. If the demo itself is
killed (SIGKILL) the kernel stops its children (processes.py): nothing keeps running, or
spinning, after the demo is gone.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from stream_app.admin import ensure_topics, topic_specs
from stream_app.config import Settings

from . import broker, demo_view, processes

# The retrain worker in the demo: a cycle every RETRAIN_INTERVAL_S over the last RETRAIN_LOOKBACK_S
# of events (~2,400 at the default 20 events/s), one short epoch, so that a cycle ends within a
# minute or so on a laptop CPU and a promotion can happen while one watches.
RETRAIN_ENV = {"CLICKSTREAM_RETRAIN_INTERVAL_S": "20", "CLICKSTREAM_RETRAIN_LOOKBACK_S": "120",
               "CLICKSTREAM_RETRAIN_MAX_EVENTS": "4000"}
RETRAIN_ARGS = ["--epochs", "1", "--max-seconds", "45"]
# The simulator's storefront drifts (popular items rotate, funnel rates change) every this many
# seconds of event time: at 50 shoppers and 20 events/s, event time runs ~1,000x faster than the
# clock, so a phase lasts about half a minute.
DRIFT_EVERY_S = 8 * 3600.0
SCRAPE_EVERY_S = 1.0
LINE_EVERY_S = 5.0


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return processes.spawn([sys.executable, "-m", "stream_app.cli", *args], log, env)


def _say(text: str) -> None:
    """User-facing output that survives a closed terminal (SIGHUP: writes fail with EIO)."""
    try:
        print(text, flush=True)
    except OSError:
        pass


def _format(topic: str, settings: Settings, value: bytes, headers: Any) -> str:
    t = settings.topics
    if topic == t.dead_letters:
        reason = dict(headers or []).get("x-dlq-reason", b"?").decode()
        return f"DEAD LETTER  reason={reason:<14} {value[:70]!r}"
    d = orjson.loads(value)
    if topic == t.next_action:
        probs = d["action_probs"]
        best = max(probs, key=probs.get)
        items = ", ".join(x["item_id"] for x in d["top_items"][:3])
        return (f"NEXT ACTION  user={d['user_id']:<6} after {d.get('action', '?'):<16} -> "
                f"{best:<16} p={probs[best]:.2f}  top items: {items}  (model {d['model_version']})")
    if topic == t.churn:
        return (f"CHURN        user={d['user_id']:<6} "
                f"p(no event in {d['horizon_s']:.0f}s)={d['churn_probability']:.2f}")
    return (f"EVENT        user={d['user_id']:<6} {d['action']:<16} item={d.get('item_id', '-')}")


def _get(url: str, timeout_s: float = 1.0) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            data: bytes = r.read()
            return data
    except (OSError, ValueError):
        return None


def _scrape(state: demo_view.DemoState, web_port: int, retrain_url: str | None) -> None:
    """One look at the worker's and the retrain worker's metrics (what does not answer yet, a
    worker still starting, is simply not shown)."""
    now = time.time()
    text = _get(f"http://127.0.0.1:{web_port}/metrics")
    if text is not None:
        state.add_worker(demo_view.parse_worker(text.decode(), now))
    if retrain_url is None:
        return
    text = _get(f"{retrain_url}/metrics")
    if text is None:
        return
    health = _get(f"{retrain_url}/health")
    last = None
    if health is not None:
        try:
            last = orjson.loads(health).get("last_cycle")
        except (orjson.JSONDecodeError, AttributeError):
            last = None
    state.add_retrain(demo_view.parse_retrain(text.decode(), last), now)


class _Screen:
    """The live view on a terminal, or compact lines when the output is not one (a log, a pipe).
    Writes that fail (the terminal closed) end the view quietly: the cleanup must still run."""

    def __init__(self, header: str) -> None:
        self.header = header
        self.state = demo_view.DemoState()
        self.live: Any = None
        self.next_line = time.monotonic() + LINE_EVERY_S
        self.noted = 0  # happenings already printed (line mode)
        self.fresh: list[str] = []  # prediction lines since the last compact line
        if sys.stdout.isatty():
            from rich.live import Live

            # printed lines (a child exited, the replay finished) appear above the view
            self.live = Live(auto_refresh=False, transient=False)
            try:
                self.live.start()
            except OSError:
                self.live = None

    def record(self, topic: str, settings: Settings, value: bytes, headers: Any) -> None:
        t = settings.topics
        try:
            if topic == t.next_action:
                self.state.add_prediction(demo_view.prediction_from_json(orjson.loads(value)))
            elif topic == t.churn:
                d = orjson.loads(value)
                self.state.add_churn(str(d["user_id"]), float(d["churn_probability"]))
            if self.live is None and topic != t.churn:
                self.fresh = (self.fresh + [_format(topic, settings, value, headers)])[-3:]
        except (ValueError, KeyError, TypeError):
            pass  # not a schema-v1 prediction: nothing to show

    def show(self) -> None:
        frame = self.state.frame(time.time(), self.header)
        if self.live is not None:
            try:
                self.live.update(demo_view.render(frame), refresh=True)
            except OSError:
                self.live = None
            return
        if time.monotonic() < self.next_line:
            return
        self.next_line = time.monotonic() + LINE_EVERY_S
        new = min(self.state.noted - self.noted, len(self.state.happenings))
        self.noted = self.state.noted
        for h in list(self.state.happenings)[len(self.state.happenings) - new:]:
            _say(f"** {h}")
        _say(demo_view.line(frame))
        for text in self.fresh:
            _say(f"   {text}")
        self.fresh = []

    def close(self) -> None:
        if self.live is not None:
            try:
                self.live.stop()
            except OSError:
                pass
            self.live = None


def run_demo(rate: float = 20.0, users: int = 50, show: tuple[str, ...] | None = None,
             model_dir: Path | None = None, replay: Path | None = None, speed: str = "10") -> int:
    """`replay`: a real log (stream_app/replay.py) instead of the simulator, at `speed`."""
    from kafka import KafkaConsumer

    from models.checkpoint import current_version

    work = Path(tempfile.mkdtemp(prefix="clickstream-demo-"))
    kafka_dir = work / "kafka"
    model_dir = model_dir or Path("var/models")
    stopping: list[int] = []  # the signal that asked us to stop
    processes.on_signals(stopping.append)  # from here on, Ctrl-C/SIGTERM/SIGHUP end in the cleanup
    children: list[subprocess.Popen] = []
    retrainer: subprocess.Popen | None = None
    consumer = None
    screen: _Screen | None = None
    try:
        if current_version(model_dir) is None:
            _say(f"no model in {model_dir}: training a quick one on simulated traffic (about a minute)...")
            train = processes.spawn([sys.executable, "-m", "stream_app.cli", "train", "--source",
                                     "simulate", "--quick", "--out", str(model_dir)], work / "train.log")
            children.append(train)
            while train.poll() is None and not stopping:
                time.sleep(0.2)
            if stopping or train.returncode != 0:
                _say(f"training stopped (see {work / 'train.log'})")
                return 1
            children.remove(train)
        _say(f"starting Kafka {broker.KAFKA_VERSION} (first run resolves the jars with Maven)...")
        info = broker.up(kafka_dir, port=broker.free_port(), die_with_parent=True)
        settings = Settings.from_env().with_(bootstrap=info.bootstrap)
        ensure_topics(settings.bootstrap, topic_specs(settings), settings.kafka_client_kwargs())
        web_port = broker.free_port()
        env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=info.bootstrap, PYTHONUNBUFFERED="1")
        # the worker and the retrain worker each get a copy of the registry: the demo's
        # promotions stay in its work folder, and every run starts from the model in model_dir
        # (a champion promoted in an earlier run has judged later simulated time than a new run
        # starts at, so nothing fresh could be judged against it for minutes)
        skip = shutil.ignore_patterns(".staging-*", ".incoming-*")
        shutil.copytree(model_dir, work / "models", ignore=skip)
        children.append(_spawn(["worker", "--data-dir", str(work / "worker"), "--web-port",
                                str(web_port), "--model-dir", str(work / "models")], env,
                               work / "worker.log"))
        retrain_port: int | None = None
        if not replay:
            retrain_port = broker.free_port()
            retrain_dir = work / "retrain-models"
            shutil.copytree(model_dir, retrain_dir, ignore=skip)
            # SIGKILL when the demo dies: a cycle in training would otherwise finish first
            retrainer = processes.spawn(
                [sys.executable, "-m", "stream_app.cli", "retrain", "--model-dir", str(retrain_dir),
                 "--web-port", str(retrain_port), *RETRAIN_ARGS],
                work / "retrain.log", dict(env, **RETRAIN_ENV), sig=signal.SIGKILL)
            children.append(retrainer)
        children.append(
            _spawn(["replay", str(replay), "--speed", speed], env, work / "replay.log") if replay else
            _spawn(["simulate", "--users", str(users), "--events", "100000000", "--rate", str(rate),
                    "--invalid-rate", "0.02", "--drift", "--drift-every", str(DRIFT_EVERY_S)],
                   env, work / "simulator.log"))
        source = children[-1]
        retrain_url = f"http://127.0.0.1:{retrain_port}" if retrain_port else None
        _say(f"broker {info.bootstrap}; worker metrics http://127.0.0.1:{web_port}/metrics; "
             + (f"retrain metrics {retrain_url}/metrics; " if retrain_url else "")
             + f"logs in {work}\nCtrl-C stops everything.\n")
        t = settings.topics
        topics = list(show or (t.next_action, t.churn))
        consumer = KafkaConsumer(*topics, bootstrap_servers=info.bootstrap, auto_offset_reset="latest",
                                 group_id=None, consumer_timeout_ms=500, **settings.kafka_client_kwargs())
        screen = _Screen(f"clickstream-gru demo · broker {info.bootstrap} · worker :{web_port}"
                         + (f" · retrain :{retrain_port}" if retrain_port else " · replay")
                         + f" · logs {work}")
        next_scrape = 0.0
        while not stopping:
            for batch in consumer.poll(timeout_ms=500).values():
                for rec in batch:
                    screen.record(rec.topic, settings, rec.value, rec.headers)
            if time.monotonic() >= next_scrape:
                next_scrape = time.monotonic() + SCRAPE_EVERY_S
                _scrape(screen.state, web_port, retrain_url)
            screen.show()
            dead = [c for c in children if c.poll() is not None]
            if replay and dead == [source] and source.returncode == 0:
                children.remove(source)  # the log is all sent: keep showing what the worker does
                _say(f"replay of {replay} finished; Ctrl-C stops the worker and the broker")
                continue
            if dead:
                _say(f"a child process exited ({dead[0].args!r}); see the logs in {work}")
                return 1
            if not broker.running(info):
                _say(f"the broker stopped; see {kafka_dir / 'server.log'}")
                return 1
        return 0
    finally:
        processes.on_signals(lambda _s: None)  # a second Ctrl-C must not abort the cleanup
        if screen is not None:
            screen.close()
        _say("\nstopping simulator, retrain worker, worker and broker...")
        if consumer is not None:
            consumer.close()
        if retrainer is not None:  # a cycle in training finishes before SIGTERM is heard: a
            processes.stop([retrainer], timeout_s=5)  # scratch registry, nothing lost by a kill
        processes.stop(children[::-1])  # the simulator first, then the worker
        broker.down(kafka_dir)
        _say(f"all stopped. Logs: {work} (worker.log, "
             f"{'replay.log' if replay else 'simulator.log, retrain.log'}, kafka/server.log)")
