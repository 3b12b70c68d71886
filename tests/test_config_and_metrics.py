from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from stream_app.config import Settings
from stream_app.instruments import Metrics


def test_settings_from_env_and_namespaced_topics():
    s = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "h:1", "CLICKSTREAM_NAMESPACE": "t1.",
                           "CLICKSTREAM_PARTITIONS": "4", "CLICKSTREAM_DATA_DIR": "/x",
                           "CLICKSTREAM_EMIT_VALID": "0"})
    assert (s.bootstrap, s.partitions, s.data_dir, s.emit_valid_events) == ("h:1", 4, Path("/x"), False)
    assert s.topics.events == "t1.clickstream.events"
    assert s.topics.dead_letters == "t1.clickstream.events.dlq"
    assert s.with_(web_port=7001, namespace=None).web_port == 7001
    assert s.app_id == "t1.clickstream-gru"  # group and changelog never shared across namespaces


def test_defaults_are_the_documented_names():
    s = Settings.from_env({})
    assert (s.topics.events, s.topics.next_action, s.topics.churn) == (
        "clickstream.events", "predictions.next_action", "predictions.churn")


def test_metrics_use_the_injected_registry():
    reg = CollectorRegistry()
    m = Metrics(reg)
    m.events_rejected.labels("invalid_json").inc(3)
    assert reg.get_sample_value("clickstream_events_rejected_total", {"reason": "invalid_json"}) == 3
    assert reg.get_sample_value("clickstream_events_rejected_total", {"reason": "key_mismatch"}) == 0
    assert b"clickstream_events_consumed_total" in m.exposition()
