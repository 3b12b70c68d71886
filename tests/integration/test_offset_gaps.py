"""Offset gaps that are not lost events: a transactional producer's commit markers occupy offsets
that hold no record. The worker's ledger sees the jumps, asks the broker, and goes on."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from confluent_kafka import Producer
from faust.types import TP

from stream_app.admin import ensure_topics, topic_specs
from stream_app.agents import read_records
from stream_app.config import Settings

from .faults import by_event, event_id_of, sim_events
from .helpers import metric_value, read_topic, start_worker

pytestmark = pytest.mark.integration


def _transactional_send(bootstrap: str, topic: str, events: list[dict], per_txn: int) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"{topic}-txn"})
    p.init_transactions()
    for i in range(0, len(events), per_txn):
        p.begin_transaction()
        for e in events[i:i + per_txn]:
            p.produce(topic, key=e["user_id"].encode(), value=orjson.dumps(e), partition=0)
        p.commit_transaction()


def test_commit_markers_are_legitimate_gaps_and_nothing_is_lost_across_a_restart(
        kafka_bootstrap, namespace, tmp_path, registry):
    reg = registry
    s = Settings(bootstrap=kafka_bootstrap, namespace=namespace, partitions=1)
    ensure_topics(kafka_bootstrap, topic_specs(s))
    events = sim_events(10, 120, seed=61)
    first, second = events[:60], events[60:]
    _transactional_send(kafka_bootstrap, s.topics.events, first, per_txn=7)
    # the broker's own answer: offset 7 (after 7 records) is a commit marker, not a record
    got = asyncio.run(read_records(kafka_bootstrap, TP(s.topics.events, 0), 5, 10))
    assert [r.offset for r in got] == [5, 6, 8, 9]
    env = {"CLICKSTREAM_PARTITIONS": "1"}
    args = ["--model-dir", str(reg), "--device", "cpu"]
    w = start_worker(kafka_bootstrap, namespace, tmp_path, env=env, extra_args=args)
    try:
        read_topic(kafka_bootstrap, s.topics.next_action, len(first), timeout=120, distinct=event_id_of)
    finally:
        assert w.stop() == 0, w.log()[-3000:]
    # committed position now sits on a marker: the restarted worker's first record is past it
    _transactional_send(kafka_bootstrap, s.topics.events, second, per_txn=7)
    w = start_worker(kafka_bootstrap, namespace, tmp_path, env=env, extra_args=args,
                     web_port=w.web_port)
    try:
        na = read_topic(kafka_bootstrap, s.topics.next_action, len(events), timeout=120,
                        distinct=event_id_of)
        metrics = w.metrics_text()
    finally:
        assert w.stop() == 0, w.log()[-3000:]
    got = by_event(na)
    assert {e["event_id"] for e in events} <= set(got)
    assert metric_value(metrics, "clickstream_offset_holes_total") == 0.0  # no record was missing
    assert "asking the broker" in w.log()  # the jumps were seen and explained
