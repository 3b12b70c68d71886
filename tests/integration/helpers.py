"""Real-broker helpers for integration tests: a worker subprocess, and reading whole topics."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from clickstream_tools.broker import free_port


@dataclass
class WorkerProcess:
    proc: subprocess.Popen
    web_port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> int:
        """SIGKILL: a crash, nothing flushed, no LeaveGroup."""
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_worker(bootstrap: str, namespace: str, tmp: Path, *, extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None, app_id: str | None = None,
                 ready_timeout: float = 90.0, data_dir: Path | None = None,
                 web_port: int | None = None) -> WorkerProcess:
    """`stream-app worker` as a real process; returns once it has its partitions assigned.
    `data_dir` (default `tmp/worker-data`): give each of several workers its own. A restart with the
    same data dir and `web_port` is the same worker to Kafka (static membership): it gets its
    partitions back without waiting for the old session to expire."""
    port = web_port or free_port()
    log_path = tmp / f"worker-{port}.log"
    full_env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=bootstrap, CLICKSTREAM_NAMESPACE=namespace,
                    CLICKSTREAM_APP_ID=app_id or f"{namespace}app", PYTHONUNBUFFERED="1",
                    **(env or {}))
    cmd = [sys.executable, "-m", "stream_app.cli", "worker", "--web-port", str(port),
           "--data-dir", str(data_dir or tmp / "worker-data"), *(extra_args or [])]
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env)
    w = WorkerProcess(proc, port, log_path, full_env)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}:\n{w.log()[-4000:]}")
        if "Worker ready" in w.log():
            return w
        time.sleep(0.25)
    w.stop()
    raise TimeoutError(f"worker not ready in {ready_timeout}s:\n{w.log()[-4000:]}")


def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 60.0,
               distinct: Callable[[Any], Any] | None = None) -> list:
    """Every record of a topic (all partitions, from the beginning), waiting for `expected`
    records, or `expected` distinct values of `distinct(record)` (at-least-once delivery may
    add duplicates, which must not end the wait early)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=1000)
    try:
        deadline = time.monotonic() + 30
        parts = None
        while not parts and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                time.sleep(0.2)
        assert parts, f"topic {topic} does not exist"
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list = []
        deadline = time.monotonic() + timeout
        seen: set = set()
        while (len(seen) if distinct else len(records)) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
                if distinct:
                    seen.update(distinct(r) for r in batch)
        # a short extra read catches anything beyond `expected` (duplicates must not hide)
        for batch in consumer.poll(timeout_ms=1000).values():
            records.extend(batch)
        return records
    finally:
        consumer.close()


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """One sample from a Prometheus text page (labels must match those given), or None."""
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, label_text = head.partition("{")
        if sample != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', label_text))
        if all(have.get(k) == v for k, v in labels.items()):
            return float(value)
    return None
