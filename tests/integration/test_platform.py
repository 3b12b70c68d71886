"""The platform against the real broker: our own broker commands, topic layout, the first flow."""

from __future__ import annotations

import collections
import re
import subprocess
import sys

import orjson
import pytest

from clickstream_tools.broker import free_port
from clickstream_tools.simulator import SimConfig, produce
from stream_app.admin import TopicMismatch, ensure_topics, partition_counts, topic_specs
from stream_app.config import Settings
from stream_app.records import parse_event

from ..modelkit import make_registry
from .helpers import read_topic, start_worker

pytestmark = pytest.mark.integration


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream_app.cli", *args], capture_output=True,
                          text=True, timeout=180)


def test_worker_without_a_model_says_how_to_train_one(kafka_bootstrap, namespace, tmp_path):
    r = _cli("worker", "--model-dir", str(tmp_path / "empty"), "--bootstrap", kafka_bootstrap,
             "--namespace", namespace)
    assert r.returncode == 2 and "stream-app train" in r.stderr


def test_kafka_up_status_down_commands(tmp_path):
    data = tmp_path / "kafka"
    port = free_port()
    up = _cli("kafka", "up", "--port", str(port), "--data-dir", str(data))
    assert up.returncode == 0, up.stderr
    assert up.stdout.strip().splitlines()[-1] == f"127.0.0.1:{port}"
    try:
        st = _cli("kafka", "status", "--data-dir", str(data))
        assert st.returncode == 0 and "serving" in st.stdout
        ready = (data / "server.log").read_text()
        assert "Kafka Server started" in ready and "4.3.1" in ready
    finally:
        down = _cli("kafka", "down", "--data-dir", str(data))
    assert down.returncode == 0 and "stopped" in down.stdout
    assert _cli("kafka", "status", "--data-dir", str(data)).returncode == 1


def test_topics_get_their_intended_partition_counts(kafka_bootstrap, namespace):
    s = Settings(bootstrap=kafka_bootstrap, namespace=namespace, partitions=6)
    specs = topic_specs(s)
    ensure_topics(kafka_bootstrap, specs)
    ensure_topics(kafka_bootstrap, specs)  # idempotent
    bus = {s.topics.model_updates, s.topics.model_artifacts}  # one partition each (model_bus.py)
    assert partition_counts(kafka_bootstrap, list(specs)) == {
        name: 1 if name in bus else 6 for name in specs}
    with pytest.raises(TopicMismatch):
        ensure_topics(kafka_bootstrap, {s.topics.events: 3})


def _counter(text: str, name: str, labels: str) -> float:
    m = re.search(rf"^{name}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    assert m, f"{name}{{{labels}}} not in /metrics"
    return float(m.group(1))


def test_events_flow_through_the_agent_with_dead_letters_and_metrics(
        kafka_bootstrap, namespace, tmp_path):
    s = Settings(bootstrap=kafka_bootstrap, namespace=namespace, partitions=4)
    ensure_topics(kafka_bootstrap, topic_specs(s))
    sent = collections.defaultdict(list)
    invalid: list[bytes] = []

    def record(key: bytes | None, value: bytes, valid: bool) -> None:
        if valid:
            sent[key.decode()].append(orjson.loads(value)["event_id"])
        else:
            invalid.append(value)

    cfg = SimConfig(users=60, events=1500, seed=11, invalid_rate=0.04)
    counts = produce(kafka_bootstrap, s.topics.events, cfg, on_sent=record)
    n_valid = counts["valid"]
    assert counts["invalid"] == len(invalid) > 0

    make_registry(tmp_path / "models", users=50, events=1500)
    worker = start_worker(kafka_bootstrap, namespace, tmp_path,
                          env={"CLICKSTREAM_PARTITIONS": "4", "CLICKSTREAM_EMIT_VALID": "1"},
                          extra_args=["--model-dir", str(tmp_path / "models")])
    try:
        out = read_topic(kafka_bootstrap, s.topics.valid_events, n_valid)
        dlq = read_topic(kafka_bootstrap, s.topics.dead_letters, len(invalid))
        metrics = worker.metrics_text()
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]

    # exactly N outputs, each user's events in the order the storefront sent them
    assert len(out) == n_valid
    got = collections.defaultdict(list)
    for rec in out:
        ev = parse_event(rec.value, rec.key)
        got[ev.user_id].append(ev.event_id)
    assert got == sent
    # every invalid message is in the dead-letter topic, original bytes plus the reason
    assert sorted(r.value for r in dlq) == sorted(invalid)
    for r in dlq:
        h = dict(r.headers)
        assert h["x-dlq-reason"].decode() in {"invalid_json", "missing_field", "invalid_value",
                                              "invalid_type", "key_mismatch"}
        assert h["x-dlq-source-topic"].decode() == s.topics.events
        assert int(h["x-dlq-source-offset"]) >= 0
    # /metrics scraped over HTTP agrees
    assert _counter(metrics, "clickstream_events_consumed_total", 'outcome="accepted"') == n_valid
    assert _counter(metrics, "clickstream_events_consumed_total", 'outcome="rejected"') == len(invalid)
    rejected = sum(float(v) for v in re.findall(
        r"^clickstream_events_rejected_total\{[^}]*\} (\S+)$", metrics, re.M))
    assert rejected == len(invalid)
    assert _counter(metrics, "clickstream_messages_produced_total",
                    f'topic="{s.topics.valid_events}"') == n_valid
