"""Prometheus metrics: one object built against a registry that is passed in.

Names carry units; labels are low-cardinality (reason codes, topic names, outcomes, partition
numbers; never a user).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .online_eval import BINS, Totals
from .records import REASONS

MAX_ONLINE_VERSIONS = 16  # model_version label values for online figures; later ones go to "other"
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
        self.stage_seconds = Counter(
            "clickstream_stage_seconds_total",
            "Time the agent spent per stage: parse, state_read, scoring, encode (payloads, state "
            "rows, online evaluation), publish (handing outputs to the producer), changelog (state "
            "rows sent and awaited: mostly waiting, overlapped with the next batch), ack",
            ["stage"], registry=r)
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
        self._online_counters(r)
        self.info = Gauge("clickstream_worker_info", "Constant 1; labels describe the worker",
                          ["app_id", "version"], registry=r)
        for reason in REASONS:  # export zeros so dashboards and alerts see every series
            self.events_rejected.labels(reason)
        for outcome in ("accepted", "rejected", "replayed"):
            self.events_consumed.labels(outcome)

    def _online_counters(self, r: CollectorRegistry) -> None:
        """Online evaluation by model version (online_eval.py): the version that made the prediction."""
        v = ["model_version"]
        self.online_scored = Counter(
            "clickstream_online_scored_total", "Predictions scored against what the user did next",
            ["model_version", "kind"], registry=r)  # action | item | churn
        self.online_action_correct = Counter(
            "clickstream_online_action_correct_total", "Most probable next action was the next action",
            v, registry=r)
        self.online_action_log_loss = Counter(
            "clickstream_online_action_log_loss_total", "Sum of next-action log loss (nats)", v,
            registry=r)
        self.online_item_hits = Counter(
            "clickstream_online_item_hits_total", "Next item was in the published top-K", v, registry=r)
        self.online_item_rr = Counter(
            "clickstream_online_item_reciprocal_rank_total",
            "Sum of 1/rank of the next item in the published top-K (0 when absent)", v, registry=r)
        self.online_churn_log_loss = Counter(
            "clickstream_online_churn_log_loss_total", "Sum of churn log loss (nats)", v, registry=r)
        self.online_churn_calibration = Counter(
            "clickstream_online_churn_calibration_total",
            "Scored churn predictions by probability bin and outcome",
            ["model_version", "bin", "outcome"], registry=r)
        self._online_versions: set[str] = set()

    def add_online(self, totals: dict[str, Totals]) -> None:
        """Add one batch's online evaluation sums (a few label lookups per version and batch)."""
        for version, t in totals.items():
            if version not in self._online_versions:
                if len(self._online_versions) >= MAX_ONLINE_VERSIONS:
                    version = "other"
                self._online_versions.add(version)
            if t.action_scored:
                self.online_scored.labels(version, "action").inc(t.action_scored)
                self.online_action_correct.labels(version).inc(t.action_correct)
                self.online_action_log_loss.labels(version).inc(t.action_log_loss)
            if t.item_scored:
                self.online_scored.labels(version, "item").inc(t.item_scored)
                self.online_item_hits.labels(version).inc(t.item_hits)
                self.online_item_rr.labels(version).inc(t.item_reciprocal_rank)
            if t.churn_scored:
                self.online_scored.labels(version, "churn").inc(t.churn_scored)
                self.online_churn_log_loss.labels(version).inc(t.churn_log_loss)
                for b, o in zip(*t.calibration.nonzero(), strict=True):
                    self.online_churn_calibration.labels(
                        version, f"{b / BINS:.1f}", "churned" if o else "returned").inc(
                        int(t.calibration[b, o]))

    def set_model(self, version: str, device: str) -> None:
        self.model_info.clear()
        self.model_info.labels(version, device).set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
