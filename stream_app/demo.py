"""`stream-app demo`: a broker, a worker and a storefront simulator, with outputs printed live.

Side effects: starts three child processes (broker, worker, simulator) and stops all of them on
Ctrl-C, SIGTERM, SIGHUP (the terminal closed), or when any of them dies, then says where the
logs are. If the demo itself is killed (SIGKILL) the kernel stops its children (processes.py):
nothing keeps running, or spinning, after the demo is gone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from . import broker, processes
from .admin import ensure_topics, topic_specs
from .config import Settings


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
    consumer = None
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
        children += [
            _spawn(["worker", "--data-dir", str(work / "worker"), "--web-port", str(web_port),
                    "--model-dir", str(model_dir)], env, work / "worker.log"),
            _spawn(["replay", str(replay), "--speed", speed], env, work / "replay.log") if replay else
            _spawn(["simulate", "--users", str(users), "--events", "100000000", "--rate", str(rate),
                    "--invalid-rate", "0.02"], env, work / "simulator.log"),
        ]
        source = children[-1]
        _say(f"broker {info.bootstrap}; worker metrics http://127.0.0.1:{web_port}/metrics; "
             f"logs in {work}\nCtrl-C stops everything.\n")
        t = settings.topics
        topics = list(show or (t.next_action, t.churn, t.dead_letters))
        consumer = KafkaConsumer(*topics, bootstrap_servers=info.bootstrap, auto_offset_reset="latest",
                                 group_id=None, consumer_timeout_ms=500, **settings.kafka_client_kwargs())
        while not stopping:
            for batch in consumer.poll(timeout_ms=500).values():
                for rec in batch:
                    _say(_format(rec.topic, settings, rec.value, rec.headers))
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
        _say("\nstopping simulator, worker and broker...")
        if consumer is not None:
            consumer.close()
        processes.stop(children[::-1])  # the simulator first, then the worker
        broker.down(kafka_dir)
        _say(f"all stopped. Logs: {work} (worker.log, {'replay' if replay else 'simulator'}.log, "
             "kafka/server.log)")
