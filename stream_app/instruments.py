"""Prometheus metrics: one object built against a registry that is passed in.

Names carry units; labels are low-cardinality (reason codes, topic names, outcomes; never a user).
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
            "clickstream_events_consumed_total", "Input messages taken from the events topic",
            ["outcome"], registry=r)  # outcome: accepted | rejected
        self.events_rejected = Counter(
            "clickstream_events_rejected_total", "Input messages sent to the dead-letter topic",
            ["reason"], registry=r)
        self.messages_produced = Counter(
            "clickstream_messages_produced_total", "Messages handed to the producer", ["topic"],
            registry=r)
        self.batch_size = Histogram(
            "clickstream_batch_size_events", "Events per micro-batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096), registry=r)
        self.batch_seconds = Histogram(
            "clickstream_batch_processing_seconds", "Wall time to process one micro-batch",
            buckets=LATENCY_BUCKETS, registry=r)
        self.info = Gauge("clickstream_worker_info", "Constant 1; labels describe the worker",
                          ["app_id", "version"], registry=r)
        for reason in REASONS:  # export zeros so dashboards and alerts see every series
            self.events_rejected.labels(reason)
        for outcome in ("accepted", "rejected"):
            self.events_consumed.labels(outcome)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
