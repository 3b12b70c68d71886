"""Streaming inference end to end: real broker, real worker process, RocksDB state."""

from __future__ import annotations

import collections

import numpy as np
import orjson
import pytest

from clickstream_tools.simulator import SimConfig, Storefront, messages, produce
from stream_app.admin import ensure_topics, topic_specs
from stream_app.config import Settings

from ..modelkit import offline_predictions
from .helpers import read_topic, start_worker

pytestmark = pytest.mark.integration


def _event_id(record) -> str:
    return orjson.loads(record.value)["event_id"]


def _original(preds: list[dict]) -> dict:
    """The prediction made when the event was applied (a redelivered copy is flagged replayed)."""
    return next((p for p in preds if not p["replayed"]), preds[0])


def _by_event(records) -> dict[str, list[dict]]:
    out = collections.defaultdict(list)
    for r in records:
        d = orjson.loads(r.value)
        assert r.key.decode() == d["user_id"]
        out[d["event_id"]].append(d)
    return out


def _predictions_then_stop(worker, bootstrap: str, topics, n: int,
                           timeout: float) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """Read both prediction topics until each holds `n` distinct events (or time runs out), stop
    the worker (it must exit cleanly); returns (next action, churn) predictions by event id."""
    try:
        na = read_topic(bootstrap, topics.next_action, n, timeout=timeout, distinct=_event_id)
        ch = read_topic(bootstrap, topics.churn, n, timeout=60, distinct=_event_id)
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
    return _by_event(na), _by_event(ch)


def _send(bootstrap, topic, msgs):
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    for k, v in msgs:
        p.send(topic, key=k, value=v)
    p.flush()
    p.close()


def test_every_valid_event_gets_one_prediction_of_each_kind(kafka_bootstrap, namespace, tmp_path,
                                                            registry):
    s = Settings(bootstrap=kafka_bootstrap, namespace=namespace, partitions=4)
    ensure_topics(kafka_bootstrap, topic_specs(s))
    cfg = SimConfig(users=300, events=10_000, seed=21, invalid_rate=0.03)
    valid_events = [orjson.loads(v) for _, v, ok in messages(cfg) if ok]
    counts = produce(kafka_bootstrap, s.topics.events, cfg)
    worker = start_worker(kafka_bootstrap, namespace, tmp_path, env={"CLICKSTREAM_PARTITIONS": "4"},
                          extra_args=["--model-dir", str(registry), "--device", "cpu"])
    try:
        na = read_topic(kafka_bootstrap, s.topics.next_action, counts["valid"], timeout=180)
        ch = read_topic(kafka_bootstrap, s.topics.churn, counts["valid"], timeout=60)
        dlq = read_topic(kafka_bootstrap, s.topics.dead_letters, counts["invalid"], timeout=30)
        metrics = worker.metrics_text()
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
    na_by, ch_by = _by_event(na), _by_event(ch)
    ids = {e["event_id"] for e in valid_events}
    assert len(na) == len(ch) == counts["valid"] == len(ids)
    assert set(na_by) == set(ch_by) == ids  # exactly one of each per valid event
    assert len(dlq) == counts["invalid"]
    one = na_by[valid_events[0]["event_id"]][0]
    assert set(one["action_probs"]) == {"view", "search", "add_to_cart", "remove_from_cart",
                                        "favorite", "purchase"}
    assert abs(sum(one["action_probs"].values()) - 1) < 1e-4 and len(one["top_items"]) == 10
    assert 0 <= ch_by[valid_events[0]["event_id"]][0]["churn_probability"] <= 1
    # per-user order of predictions follows the events
    order = collections.defaultdict(list)
    for r in na:
        d = orjson.loads(r.value)
        order[d["user_id"]].append(d["event_id"])
    sent = collections.defaultdict(list)
    for e in valid_events:
        sent[e["user_id"]].append(e["event_id"])
    assert order == sent
    assert 'clickstream_event_to_prediction_seconds_count' in metrics
    assert f'clickstream_messages_produced_total{{topic="{s.topics.churn}"}} {counts["valid"]}.0' in metrics


def test_stream_predictions_equal_offline_model_and_survive_a_restart(kafka_bootstrap, namespace,
                                                                      tmp_path, registry):
    """Half the events, a clean stop, the other half: the published predictions equal one
    offline full-sequence pass over every user's whole history (state restored correctly)."""
    s = Settings(bootstrap=kafka_bootstrap, namespace=namespace, partitions=4)
    ensure_topics(kafka_bootstrap, topic_specs(s))
    events = [e for e, _ in Storefront(SimConfig(users=80, events=2000, seed=5)).events()]
    msgs = [(e["user_id"].encode(), orjson.dumps(e)) for e in events]
    half = len(msgs) // 2
    args = ["--model-dir", str(registry), "--device", "cpu"]
    env = {"CLICKSTREAM_PARTITIONS": "4"}
    _send(kafka_bootstrap, s.topics.events, msgs[:half])
    w1 = start_worker(kafka_bootstrap, namespace, tmp_path, env=env, extra_args=args)
    try:
        first = read_topic(kafka_bootstrap, s.topics.next_action, half, timeout=120,
                           distinct=_event_id)
    finally:
        assert w1.stop() == 0, w1.log()[-3000:]
    assert len({_event_id(r) for r in first}) == half
    # the local RocksDB copy is gone too: state must come back from the changelog topic
    import shutil

    shutil.rmtree(tmp_path / "worker-data")
    _send(kafka_bootstrap, s.topics.events, msgs[half:])
    w2 = start_worker(kafka_bootstrap, namespace, tmp_path, env=env, extra_args=args)
    na_by, ch_by = _predictions_then_stop(w2, kafka_bootstrap, s.topics, len(msgs), timeout=120)
    missing = [e["event_id"] for e in events if e["event_id"] not in na_by]
    if missing:  # say where it went before failing
        dlq = read_topic(kafka_bootstrap, s.topics.dead_letters, 0, timeout=1)
        idx = [i for i, e in enumerate(events) if e["event_id"] in missing]
        print("MISSING", missing, "at", idx, "of", len(events), "half", half,
              "dlq", [(dict(r.headers).get("x-dlq-reason"), r.value[:60]) for r in dlq])
        print("W2 LOG", w2.log()[-4000:])
        print("W1 LOG", w1.log()[-4000:])
    assert len(na_by) == len(msgs)  # resumed from committed offsets: nothing lost
    ref = offline_predictions(registry, events)
    for e in events:
        got = _original(na_by[e["event_id"]])
        probs, churn, top = ref[e["event_id"]]
        np.testing.assert_allclose([got["action_probs"][a] for a in got["action_probs"]], probs,
                                   atol=1e-5)
        np.testing.assert_allclose([x["score"] for x in got["top_items"]], top, atol=1e-5)
        assert _original(ch_by[e["event_id"]])["churn_probability"] == pytest.approx(churn, abs=1e-5)
