"""Prometheus metrics: one object built against a registry that is passed in.

Names carry units; labels are low-cardinality (reason codes, topic names, outcomes, partition
numbers; never a user).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .records import REASONS

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events_consumed = Counter(
            "clickstream_events_consumed_total", "Input messages by outcome", ["outcome"],
            registry=r)  # accepted | rejected | replayed
        self.events_rejected = Counter(
            "clickstream_events_rejected_total", "Input messages sent to the dead-letter topic",
            ["reason"], registry=r)
        self.messages_produced = Counter(
            "clickstream_messages_produced_total", "Messages acknowledged by the broker", ["topic"],
            registry=r)
        self.late_events = Counter(
            "clickstream_late_events_total", "Events older than their user's newest event", registry=r)
        self.rebuilt_states = Counter(
            "clickstream_rebuilt_states_total",
            "Hidden states rebuilt from the window after a model version change", registry=r)
        self.state_errors = Counter(
            "clickstream_state_decode_errors_total", "Unreadable user-state rows", registry=r)
        self.split_users = Counter(
            "clickstream_split_users_total",
            "New state rows for users who already have a row in another partition of this worker "
            "(their events arrive on two partitions: a producer changed its partitioner)", registry=r)
        self.offset_holes = Counter(
            "clickstream_offset_holes_total",
            "Input offsets that never reached the agent and were re-read (faust-streaming#596)",
            registry=r)
        self.model_load_failures = Counter(
            "clickstream_model_load_failures_total",
            "Model versions refused (checksum, config or non-finite weights); serving continues",
            registry=r)
        self.expired_users = Counter(
            "clickstream_expired_users_total", "User states deleted by the idle sweep", registry=r)
        self.batch_size = Histogram(
            "clickstream_batch_size_events", "Events per micro-batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096), registry=r)
        self.batch_seconds = Histogram(
            "clickstream_batch_processing_seconds", "Wall time to process one micro-batch",
            buckets=LATENCY_BUCKETS, registry=r)
        self.step_seconds = Histogram(
            "clickstream_gru_step_seconds", "Scoring time of one micro-batch (all its waves)",
            buckets=LATENCY_BUCKETS, registry=r)
        self.latency = Histogram(
            "clickstream_event_to_prediction_seconds",
            "From the input message's Kafka timestamp to the broker acknowledging its predictions",
            buckets=LATENCY_BUCKETS, registry=r)
        self.active_users = Gauge(
            "clickstream_active_users", "User states held by this worker (at the last sweep)",
            registry=r)
        self.state_bytes = Gauge(
            "clickstream_state_bytes", "Encoded bytes of user state held by this worker (last sweep)",
            registry=r)
        self.cache_lookups = Counter(
            "clickstream_hidden_cache_lookups_total", "Device hidden-state cache lookups",
            ["result"], registry=r)  # hit | miss
        self.consumer_lag = Gauge(
            "clickstream_consumer_lag_messages", "High-water mark minus the next offset to handle",
            ["partition"], registry=r)
        self.model_info = Gauge(
            "clickstream_model_info", "Constant 1; labels name the model version and device",
            ["version", "device"], registry=r)
        self.info = Gauge("clickstream_worker_info", "Constant 1; labels describe the worker",
                          ["app_id", "version"], registry=r)
        for reason in REASONS:  # export zeros so dashboards and alerts see every series
            self.events_rejected.labels(reason)
        for outcome in ("accepted", "rejected", "replayed"):
            self.events_consumed.labels(outcome)

    def set_model(self, version: str, device: str) -> None:
        self.model_info.clear()
        self.model_info.labels(version, device).set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
