"""A worker with CLICKSTREAM_PSEUDONYM_KEY: no raw user id reaches the predictions, the normalised
events or the state changelog; the raw input topic and the dead letters keep what was sent."""

from __future__ import annotations

import orjson
import pytest

from clickstream_tools.simulator import SimConfig, messages, produce
from stream_app.admin import ensure_topics, topic_specs
from stream_app.config import Settings
from stream_app.pseudonymisation import Pseudonymiser

from .helpers import read_topic, start_worker

pytestmark = pytest.mark.integration

KEY = "integration-test-pseudonym-key"


def test_worker_publishes_and_stores_pseudonyms_only(kafka_bootstrap, namespace, tmp_path, registry):
    s = Settings(bootstrap=kafka_bootstrap, namespace=namespace, partitions=2)
    ensure_topics(kafka_bootstrap, topic_specs(s))
    cfg = SimConfig(users=15, events=150, seed=11, invalid_rate=0.05)
    sent = list(messages(cfg))
    users = {orjson.loads(v)["user_id"] for _, v, ok in sent if ok}
    counts = produce(kafka_bootstrap, s.topics.events, cfg)
    worker = start_worker(kafka_bootstrap, namespace, tmp_path,
                          env={"CLICKSTREAM_PARTITIONS": "2", "CLICKSTREAM_PSEUDONYM_KEY": KEY,
                               "CLICKSTREAM_EMIT_VALID": "1"},
                          extra_args=["--model-dir", str(registry), "--device", "cpu"])
    try:
        by_id = lambda r: orjson.loads(r.value)["event_id"]  # noqa: E731
        outputs = [read_topic(kafka_bootstrap, t, counts["valid"], timeout=120, distinct=by_id)
                   for t in (s.topics.next_action, s.topics.churn, s.topics.valid_events)]
        changelog = read_topic(kafka_bootstrap, f"{namespace}app-user-state-changelog", 1)
        dead = read_topic(kafka_bootstrap, s.topics.dead_letters, counts["invalid"])
    finally:
        worker.stop()
    p = Pseudonymiser(KEY.encode())
    aliases = {p.pseudonym(u).encode() for u in users}
    for records in outputs:
        assert {by_id(r) for r in records} == {orjson.loads(v)["event_id"] for _, v, ok in sent if ok}
        for r in records:
            assert r.key in aliases and orjson.loads(r.value)["user_id"].encode() == r.key
    assert changelog and {r.key for r in changelog} <= aliases
    for r in [*changelog, *(r for records in outputs for r in records)]:
        for u in users:  # not even inside a session id or a state row
            assert f'"{u}"'.encode() not in r.value and f'"{u}-s'.encode() not in r.value
    assert len(dead) >= counts["invalid"]  # dead letters: the original bytes, raw ids included
    assert {r.value for r in dead} <= {v for _, v, ok in sent if not ok}
