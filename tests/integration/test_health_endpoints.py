"""/health and /ready of a live worker process on the real broker."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import orjson
import pytest

from clickstream_tools.simulator import SimConfig, produce
from stream_app.admin import ensure_topics, topic_specs
from stream_app.config import Settings

from .helpers import read_topic, start_worker

pytestmark = pytest.mark.integration


def get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


def test_live_worker_is_healthy_and_ready_once_assigned(kafka_bootstrap, namespace, tmp_path, registry):
    s = Settings(bootstrap=kafka_bootstrap, namespace=namespace, partitions=4)
    ensure_topics(kafka_bootstrap, topic_specs(s))
    worker = start_worker(kafka_bootstrap, namespace, tmp_path, env={"CLICKSTREAM_PARTITIONS": "4"},
                          extra_args=["--model-dir", str(registry), "--device", "cpu"])
    try:
        status, body = get(worker.web_port, "/health")
        assert (status, body["status"]) == (200, "ok"), body
        deadline = time.monotonic() + 90
        ready: tuple[int, dict] = (0, {})
        while time.monotonic() < deadline:
            ready = get(worker.web_port, "/ready")
            if ready[0] == 200:
                break
            assert ready[0] == 503 and ready[1]["reason"], ready  # not ready says why
            time.sleep(0.5)
        status, body = ready
        assert status == 200, body
        assert body["partitions"] == [0, 1, 2, 3]  # the only worker of its group holds them all

        # traffic flows through and the worker stays ready, its lag drained
        counts = produce(kafka_bootstrap, s.topics.events, SimConfig(users=20, events=300, seed=4))
        read_topic(kafka_bootstrap, s.topics.next_action, counts["valid"], timeout=120)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, body = get(worker.web_port, "/ready")
            assert status == 200, body
            if body["lag"] == 0:
                break
            time.sleep(0.5)
        assert body["lag"] == 0, body
    finally:
        worker.stop()
