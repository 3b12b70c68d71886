"""`stream-app demo`: a broker, a worker and a storefront simulator, with outputs printed live.

Side effects: starts three child processes (broker, worker, simulator) and stops all of them on
Ctrl-C, on SIGTERM, or when any of them dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from . import broker
from .admin import ensure_topics, topic_specs
from .config import Settings


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "stream_app.cli", *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


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
             model_dir: Path | None = None) -> int:
    from kafka import KafkaConsumer

    from models.checkpoint import current_version

    work = Path(tempfile.mkdtemp(prefix="clickstream-demo-"))
    kafka_dir = work / "kafka"
    model_dir = model_dir or Path("var/models")
    if current_version(model_dir) is None:
        print(f"no model in {model_dir}: training a quick one on simulated traffic (about a minute)...")
        rc = subprocess.call([sys.executable, "-m", "stream_app.cli", "train", "--source", "simulate",
                              "--quick", "--out", str(model_dir)])
        if rc != 0:
            return rc
    print(f"starting Kafka {broker.KAFKA_VERSION} (first run resolves the jars with Maven)...")
    info = broker.up(kafka_dir, port=broker.free_port())
    settings = Settings.from_env().with_(bootstrap=info.bootstrap)
    ensure_topics(settings.bootstrap, topic_specs(settings))
    web_port = broker.free_port()
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=info.bootstrap, PYTHONUNBUFFERED="1")
    children = [
        _spawn(["worker", "--data-dir", str(work / "worker"), "--web-port", str(web_port),
                "--model-dir", str(model_dir)], env, work / "worker.log"),
        _spawn(["simulate", "--users", str(users), "--events", "100000000", "--rate", str(rate),
                "--invalid-rate", "0.02"], env, work / "simulator.log"),
    ]
    print(f"broker {info.bootstrap}; worker metrics http://127.0.0.1:{web_port}/metrics; "
          f"logs in {work}\nCtrl-C stops everything.\n")
    t = settings.topics
    topics = list(show or (t.next_action, t.churn, t.dead_letters))
    consumer = KafkaConsumer(*topics, bootstrap_servers=info.bootstrap, auto_offset_reset="latest",
                             group_id=None, consumer_timeout_ms=500)
    stop = False

    def _stop(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)  # also when started from a shell that ignored SIGINT
    try:
        while not stop:
            for batch in consumer.poll(timeout_ms=500).values():
                for rec in batch:
                    print(_format(rec.topic, settings, rec.value, rec.headers), flush=True)
            dead = [c for c in children if c.poll() is not None]
            if dead:
                print(f"a child process exited ({dead[0].args!r}); see logs in {work}")
                return 1
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not abort the cleanup
        print("\nstopping simulator, worker and broker...")
        consumer.close()
        for c in children:
            if c.poll() is None:
                c.send_signal(signal.SIGTERM)
        for c in children:
            try:
                c.wait(30)
            except subprocess.TimeoutExpired:
                c.kill()
        broker.down(kafka_dir)
        time.sleep(0.1)
        print("all stopped.")
    return 0
