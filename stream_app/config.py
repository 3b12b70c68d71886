"""Service settings: one frozen object, and the only place that reads the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .topics import DEFAULT_PARTITIONS, TopicNames


@dataclass(frozen=True)
class Settings:
    bootstrap: str = "127.0.0.1:9092"
    app_id: str = "clickstream-gru"
    namespace: str = ""  # prefix for every topic name (tests, side-by-side deployments)
    partitions: int = DEFAULT_PARTITIONS
    data_dir: Path = Path("var/worker")
    store: str = "rocksdb://"  # "memory://" for throwaway runs
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    batch_max: int = 512  # events per micro-batch
    batch_within_s: float = 0.01  # longest wait to fill a batch: bounds latency at low load
    emit_valid_events: bool = True  # publish normalised events for downstream users and retraining
    log_level: str = "info"
    topics: TopicNames = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "topics", TopicNames(self.namespace))

    def with_(self, **changes: Any) -> Settings:
        changes = {k: v for k, v in changes.items() if v is not None}
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        d = cls()
        return cls(
            bootstrap=e.get("KAFKA_BOOTSTRAP_SERVERS", d.bootstrap),
            app_id=e.get("CLICKSTREAM_APP_ID", d.app_id),
            namespace=e.get("CLICKSTREAM_NAMESPACE", d.namespace),
            partitions=int(e.get("CLICKSTREAM_PARTITIONS", d.partitions)),
            data_dir=Path(e.get("CLICKSTREAM_DATA_DIR", str(d.data_dir))),
            store=e.get("CLICKSTREAM_STORE", d.store),
            web_host=e.get("CLICKSTREAM_WEB_HOST", d.web_host),
            web_port=int(e.get("CLICKSTREAM_WEB_PORT", d.web_port)),
            batch_max=int(e.get("CLICKSTREAM_BATCH_MAX", d.batch_max)),
            batch_within_s=float(e.get("CLICKSTREAM_BATCH_WITHIN_S", d.batch_within_s)),
            emit_valid_events=e.get("CLICKSTREAM_EMIT_VALID", "1") not in ("0", "false", "no"),
            log_level=e.get("CLICKSTREAM_LOG_LEVEL", d.log_level),
        )
