"""The storefront client and the example downstream consumer around a real worker: events the
client accepts come back as predictions through the consumer's HTTP; invalid ones are rejected
with the worker's reason codes before they are sent."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from clickstream_tools.broker import free_port
from stream_app.admin import ensure_topics, topic_specs
from stream_app.client import StorefrontClient
from stream_app.config import Settings

from .helpers import read_topic, start_worker

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "latest_predictions.py"
T0 = 1_767_225_600.0


def _events(users: int, per_user: int) -> list[dict]:
    return [{"event_id": f"{u}-{i}", "user_id": f"shopper{u}", "ts": T0 + 10 * i + u,
             "action": "view" if i % 3 else "add_to_cart", "item_id": f"i{(u * 7 + i) % 30}",
             "session_id": f"s{u}"} for i in range(per_user) for u in range(users)]


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except OSError:
        return 0, {}


def test_client_rejects_invalid_events_with_the_workers_reasons(kafka_bootstrap, namespace):
    s = Settings(bootstrap=kafka_bootstrap, namespace=namespace, partitions=2)
    ensure_topics(kafka_bootstrap, topic_specs(s))
    good = _events(1, 2)
    bad = [
        {"event_id": "m", "ts": T0, "action": "view", "item_id": "i"},  # no user_id
        {**good[0], "event_id": "h", "action": "hover"},
        {**good[0], "event_id": "ms", "ts": T0 * 1000},  # milliseconds
        {**good[0], "event_id": "f", "ts": time.time() + 7 * 86400},  # a week ahead
        {**good[0], "event_id": "d", "ts": datetime.datetime.now()},  # no UTC offset
        {**good[0], "event_id": "s", "price": {1, 2}},  # no JSON for a set
        b"{truncated",
    ]
    with StorefrontClient(s) as client:
        rejected = client.send_batch([good[0], *bad, good[1]])
        report = client.flush()
    assert [(r.event, r.reason) for r in rejected] == [
        (bad[0], "missing_field"), (bad[1], "invalid_value"), (bad[2], "invalid_value"),
        (bad[3], "future_timestamp"), (bad[4], "invalid_value"), (bad[5], "invalid_type"),
        (bad[6], "invalid_json")]
    assert report.delivered == 2 and report.failed == []
    recs = read_topic(kafka_bootstrap, s.topics.events, 2)
    assert sorted(json.loads(r.value)["event_id"] for r in recs) == ["0-0", "0-1"]
    assert {r.key for r in recs} == {b"shopper0"}


def test_client_events_come_back_through_the_example_consumers_http(kafka_bootstrap, namespace,
                                                                     tmp_path, registry):
    s = Settings(bootstrap=kafka_bootstrap, namespace=namespace, partitions=2)
    ensure_topics(kafka_bootstrap, topic_specs(s))
    worker = start_worker(kafka_bootstrap, namespace, tmp_path, env={"CLICKSTREAM_PARTITIONS": "2"},
                          extra_args=["--model-dir", str(registry), "--device", "cpu"])
    port = free_port()
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, CLICKSTREAM_NAMESPACE=namespace,
               PYTHONUNBUFFERED="1")
    with open(tmp_path / "consumer.log", "wb") as log:
        consumer = subprocess.Popen([sys.executable, str(EXAMPLE), "--port", str(port),
                                     "--group", f"{namespace}latest"], env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
    try:
        events = _events(users=6, per_user=5)
        with StorefrontClient(s) as client:
            assert client.send_batch(events) == []
            assert client.flush().delivered == len(events)
        last = {e["user_id"]: e["event_id"] for e in events}  # each user's newest event
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        pending = dict(last)
        while pending and time.monotonic() < deadline:
            assert consumer.poll() is None, (tmp_path / "consumer.log").read_text()[-3000:]
            for user, eid in list(pending.items()):
                status, body = _get(f"{base}/users/{user}")
                if status == 200 and all(body[k] and body[k]["event_id"] == eid
                                         for k in ("next_action", "churn")):
                    assert body["next_action"]["user_id"] == user
                    assert set(body["next_action"]["action_probs"]) >= {"view", "purchase"}
                    del pending[user]
            time.sleep(0.5)
        assert not pending, f"no latest prediction served for {pending}:\n{worker.log()[-2000:]}"
        assert _get(f"{base}/users/nobody")[0] == 404
        status, health = _get(f"{base}/health")
        assert status == 200 and health["users"] == 6 and health["applied"] >= 2 * 6
    finally:
        consumer.terminate()
        consumer.wait(10)
        worker.stop()
