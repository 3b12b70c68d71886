"""Topic names and partition counts: the service's stateful names, in one place.

Every name derives from an optional namespace prefix (tests give each test its own), never from
where a function lives. The input topic and the per-user state changelog must have the same
partition count (co-partitioning: a user's events and state live in the same partition number).
"""

from __future__ import annotations

from dataclasses import dataclass

EVENTS = "clickstream.events"
DEAD_LETTERS = "clickstream.events.dlq"
VALID_EVENTS = "clickstream.events.valid"
NEXT_ACTION = "predictions.next_action"
CHURN = "predictions.churn"
MODEL_UPDATES = "models.updates"
MODEL_ARTIFACTS = "models.artifacts"
ARTIFACT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024 + (1 << 20)  # model_bus.ARTIFACT_MAX_BYTES + framing

# Per-topic settings by base name (applied when admin.ensure_topics creates the topic). The model
# bus topics are compacted: the updates topic keeps the latest announcement (key "current"), the
# artifacts topic one packed model per version, as one message up to the raised size limit.
TOPIC_CONFIGS: dict[str, dict[str, str]] = {
    MODEL_UPDATES: {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1"},
    MODEL_ARTIFACTS: {"cleanup.policy": "compact",
                      "max.message.bytes": str(ARTIFACT_MAX_MESSAGE_BYTES)},
}

DEFAULT_PARTITIONS = 8


@dataclass(frozen=True)
class TopicNames:
    namespace: str = ""

    def _n(self, name: str) -> str:
        return f"{self.namespace}{name}"

    @property
    def events(self) -> str:
        return self._n(EVENTS)

    @property
    def dead_letters(self) -> str:
        return self._n(DEAD_LETTERS)

    @property
    def valid_events(self) -> str:
        return self._n(VALID_EVENTS)

    @property
    def next_action(self) -> str:
        return self._n(NEXT_ACTION)

    @property
    def churn(self) -> str:
        return self._n(CHURN)

    @property
    def model_updates(self) -> str:
        return self._n(MODEL_UPDATES)

    @property
    def model_artifacts(self) -> str:
        return self._n(MODEL_ARTIFACTS)
