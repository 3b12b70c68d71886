"""Topic administration with kafka-python's admin client: create the service's topics with their
intended partition counts before anything produces to them (the broker's auto-create would make
1-partition topics and break co-partitioning), and check existing ones.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from .config import Settings
from .kafka_clients import connect
from .topics import TOPIC_CONFIGS

log = logging.getLogger(__name__)


class TopicMismatch(RuntimeError):
    pass


def _configs(name: str) -> dict[str, str]:
    """Settings of a topic by its base name (topics.TOPIC_CONFIGS), whatever its namespace."""
    return next((dict(c) for base, c in TOPIC_CONFIGS.items() if name.endswith(base)), {})


def topic_specs(settings: Settings) -> dict[str, int]:
    """name -> partitions. Input and outputs share the partition count: all are keyed by user.
    The model bus topics (model_bus.py) have one partition each and are compacted."""
    t, n = settings.topics, settings.partitions
    return {t.events: n, t.dead_letters: n, t.valid_events: n, t.next_action: n, t.churn: n,
            t.model_updates: 1, t.model_artifacts: 1}


def _admin(bootstrap: str, client_kwargs: Mapping[str, Any] | None) -> KafkaAdminClient:
    """`client_kwargs`: security settings (Settings.kafka_client_kwargs())."""
    return connect(lambda: KafkaAdminClient(bootstrap_servers=bootstrap, client_id="clickstream-gru-admin",
                                            bootstrap_timeout_ms=10_000, **(client_kwargs or {})),
                   bootstrap, "the admin client")


def partition_counts(bootstrap: str, names: list[str] | None = None,
                     client_kwargs: Mapping[str, Any] | None = None) -> dict[str, int]:
    admin = _admin(bootstrap, client_kwargs)
    try:
        described = admin.describe_topics(names)
    finally:
        admin.close()
    return {d.get("name") or d["topic"]: len(d["partitions"]) for d in described if not d.get("error_code")}


def ensure_topics(bootstrap: str, specs: Mapping[str, int],
                  client_kwargs: Mapping[str, Any] | None = None) -> None:
    """Create missing topics; fail loudly when an existing topic has a different partition count."""
    admin = _admin(bootstrap, client_kwargs)
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(name, n, 1, topic_configs=_configs(name)) for name, n in specs.items()
                   if name not in existing]
        if missing:
            try:
                admin.create_topics(missing, wait_for_metadata=True)
            except TopicAlreadyExistsError:
                pass  # another process created it between list and create
            log.info("created topics %s", [t.name for t in missing])
    finally:
        admin.close()
    have = partition_counts(bootstrap, list(specs), client_kwargs)
    wrong = {k: (have.get(k), n) for k, n in specs.items() if have.get(k) != n}
    if wrong:
        raise TopicMismatch(f"topics with unexpected partition counts (have, want): {wrong}")
