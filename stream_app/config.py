"""Service settings: one frozen object, and the only place that reads the environment."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .topics import DEFAULT_PARTITIONS, TopicNames

if TYPE_CHECKING:
    from models.features import WindowLimits

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class Settings:
    bootstrap: str = "127.0.0.1:9092"
    app_id: str = "clickstream-gru"
    namespace: str = ""  # prefix for every topic name (tests, side-by-side deployments)
    partitions: int = DEFAULT_PARTITIONS
    data_dir: Path = Path("var/worker")
    store: str = "rocksdb://"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    batch_max: int = 512  # events per micro-batch
    batch_within_s: float = 0.02  # longest a batch's first event waits for more to arrive
    batch_idle_s: float = 0.002  # a batch closes once no event has arrived for this long
    # longest a batch's first event waits while the broker holds more (behind); its own setting:
    # changing batch_within_s leaves it as it is
    batch_behind_within_s: float = 0.02
    producer_linger_ms: int = 2  # lets the producer pack a batch's sends into fewer requests
    # batches whose outputs the broker is still acknowledging while the next one is scored; their
    # rows are held in memory (PendingRows) until the changelog has them
    in_flight_batches: int = 2
    fetch_max_wait_ms: int = 50  # longest the broker holds a fetch with no new data (Faust: 1500)
    emit_valid_events: bool = False  # also publish normalised events (for retraining consumers)
    model_dir: Path = Path("var/models")  # model registry (stream-app train --out)
    device: str = "auto"  # auto | cpu | cuda
    top_k: int = 10  # next items per prediction
    window_events: int = 20  # N: events kept per user (>= the model's window)
    window_seconds: float = 86400.0  # T: window time span; users idle longer are expired
    sweep_interval_s: float = 60.0  # how often idle users are expired
    cache_users: int = 100_000  # device-resident hidden states
    model_poll_s: float = 10.0  # how often the registry's CURRENT is checked for a new version
    # 1: a worker is an event loop plus small matmuls; torch's default pool (one thread per core)
    # spin-waits against the loop, the broker and other workers (measured: 2.8x fewer events/s
    # per worker on a shared 2-core machine). Scale with partitions and workers. 0 = torch's default.
    torch_threads: int = 1
    log_level: str = "info"
    # event time may run ahead of the worker's wall clock by at most this much; later events are
    # dead-lettered (`future_timestamp`), so no producer can push the expiry clock forward
    max_future_s: float = 600.0
    # static group membership: a restarted worker with the same id gets its partitions back at
    # once instead of after the session timeout. "" = derived from the host name, data dir and web
    # address (stable across restarts of one worker, distinct between workers; the address is
    # part of it because the broker hands a returning member its cached assignment, which Faust
    # checks against the worker's own URL)
    instance_id: str = ""
    session_timeout_s: float = 10.0  # a crashed worker's partitions move after this long
    standby_replicas: int = 1  # warm copies of each state partition on other workers
    # this many events in a row failing in scoring = the fault is not in the data: stop, unacked
    breaker_failures: int = 20
    # the retrain worker (`stream-app retrain`, stream_app/retrain.py)
    retrain_interval_s: float = 3600.0  # from the end of one cycle to the start of the next
    retrain_lookback_s: float = 7 * 86400.0  # a cycle reads the events topic this far back
    retrain_max_events: int = 200_000  # ... but at most this many (the newest)
    retrain_margin: float = 0.005  # hit@20 and MRR@20 must both improve by this (see challenger.py)
    retrain_web_port: int = 6070  # /metrics and /health of the retrain worker
    # /ready fails when a partition has lag > 0 and its position has not moved for this long
    stall_s: float = 60.0
    # Kafka security, for every client the service and its tools create (worker, admin, hole
    # filling, replay, simulator, storefront client, demo, retrain): kafka_client_kwargs() and
    # faust_credentials() carry them
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    sasl_mechanism: str = "PLAIN"  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    ssl_cafile: str = ""  # CA bundle to verify the broker ("" = the system's)
    ssl_certfile: str = ""  # client certificate (mutual TLS), PEM
    ssl_keyfile: str = ""  # its private key, PEM
    # "" = user ids are used as sent; else the HMAC-SHA256 key user and session ids are
    # pseudonymised with before anything is stored or published (pseudonymisation.py)
    pseudonym_key: str = field(default="", repr=False)
    topics: TopicNames = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "topics", TopicNames(self.namespace))
        if not self.store.startswith("rocksdb:"):
            raise ValueError(f"store {self.store!r}: state rows are kept per partition in RocksDB; "
                             "use rocksdb://")
        if self.in_flight_batches < 1:
            raise ValueError(f"in_flight_batches {self.in_flight_batches}: at least 1")
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ValueError(f"security_protocol {self.security_protocol!r}: expected one of "
                             f"{SECURITY_PROTOCOLS}")
        if self.security_protocol.startswith("SASL_"):
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise ValueError(f"sasl_mechanism {self.sasl_mechanism!r}: expected one of "
                                 f"{SASL_MECHANISMS}")
            if not (self.sasl_username and self.sasl_password):
                raise ValueError(f"security_protocol {self.security_protocol} needs "
                                 "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")

    @property
    def group_instance_id(self) -> str:
        if self.instance_id:
            return self.instance_id
        where = f"{socket.gethostname()}:{self.data_dir.resolve()}:{self.web_host}:{self.web_port}"
        return f"{self.app_id}-{hashlib.sha256(where.encode()).hexdigest()[:12]}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for SSL and SASL_SSL (hostname checked, CA from ssl_cafile or the
        system's, a client certificate when one is configured); None for plaintext protocols."""
        if not self.security_protocol.endswith("SSL"):
            return None
        ctx = ssl.create_default_context(cafile=self.ssl_cafile or None)
        if self.ssl_certfile:
            ctx.load_cert_chain(self.ssl_certfile, self.ssl_keyfile or None)
        return ctx

    def kafka_client_kwargs(self) -> dict[str, Any]:
        """Security keyword arguments for every kafka-python and aiokafka client (producers,
        consumers, admin clients: both libraries use these names). Empty for PLAINTEXT, so
        `KafkaProducer(bootstrap_servers=s.bootstrap, **s.kafka_client_kwargs())` works as before."""
        if self.security_protocol == "PLAINTEXT":
            return {}
        kw: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL_"):
            kw |= {"sasl_mechanism": self.sasl_mechanism, "sasl_plain_username": self.sasl_username,
                   "sasl_plain_password": self.sasl_password}
        ctx = self.ssl_context()
        if ctx is not None:
            kw["ssl_context"] = ctx
        return kw

    def faust_credentials(self) -> Any:
        """The same settings as Faust's `broker_credentials` (None for PLAINTEXT)."""
        import faust  # heavy import kept local: tools that never start a worker do not pay it

        if self.security_protocol.startswith("SASL_"):
            return faust.SASLCredentials(username=self.sasl_username, password=self.sasl_password,
                                         mechanism=self.sasl_mechanism, ssl_context=self.ssl_context())
        if self.security_protocol == "SSL":
            return faust.SSLCredentials(self.ssl_context())
        return None

    def window_limits(self) -> WindowLimits:
        """The per-user window as models.features applies it (a WindowLimits), so that training
        and the retrain judge reproduce what this worker keeps."""
        from models.features import WindowLimits  # torch: only where a model is trained

        return WindowLimits(self.window_events, self.window_seconds)

    def with_(self, **changes: Any) -> Settings:
        changes = {k: v for k, v in changes.items() if v is not None}
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        d = cls()
        return cls(
            bootstrap=e.get("KAFKA_BOOTSTRAP_SERVERS", d.bootstrap),
            # the app id names the consumer group and the state changelog: namespace it too
            app_id=e.get("CLICKSTREAM_APP_ID", e.get("CLICKSTREAM_NAMESPACE", "") + d.app_id),
            namespace=e.get("CLICKSTREAM_NAMESPACE", d.namespace),
            partitions=int(e.get("CLICKSTREAM_PARTITIONS", d.partitions)),
            data_dir=Path(e.get("CLICKSTREAM_DATA_DIR", str(d.data_dir))),
            store=e.get("CLICKSTREAM_STORE", d.store),
            web_host=e.get("CLICKSTREAM_WEB_HOST", d.web_host),
            web_port=int(e.get("CLICKSTREAM_WEB_PORT", d.web_port)),
            batch_max=int(e.get("CLICKSTREAM_BATCH_MAX", d.batch_max)),
            batch_within_s=float(e.get("CLICKSTREAM_BATCH_WITHIN_S", d.batch_within_s)),
            batch_idle_s=float(e.get("CLICKSTREAM_BATCH_IDLE_S", d.batch_idle_s)),
            batch_behind_within_s=float(e.get("CLICKSTREAM_BATCH_BEHIND_WITHIN_S", d.batch_behind_within_s)),
            producer_linger_ms=int(e.get("CLICKSTREAM_PRODUCER_LINGER_MS", d.producer_linger_ms)),
            in_flight_batches=int(e.get("CLICKSTREAM_IN_FLIGHT_BATCHES", d.in_flight_batches)),
            fetch_max_wait_ms=int(e.get("CLICKSTREAM_FETCH_MAX_WAIT_MS", d.fetch_max_wait_ms)),
            emit_valid_events=e.get("CLICKSTREAM_EMIT_VALID", "0") not in ("0", "false", "no"),
            model_dir=Path(e.get("CLICKSTREAM_MODEL_DIR", str(d.model_dir))),
            device=e.get("CLICKSTREAM_DEVICE", d.device),
            top_k=int(e.get("CLICKSTREAM_TOP_K", d.top_k)),
            window_events=int(e.get("CLICKSTREAM_WINDOW_EVENTS", d.window_events)),
            window_seconds=float(e.get("CLICKSTREAM_WINDOW_SECONDS", d.window_seconds)),
            sweep_interval_s=float(e.get("CLICKSTREAM_SWEEP_INTERVAL_S", d.sweep_interval_s)),
            cache_users=int(e.get("CLICKSTREAM_CACHE_USERS", d.cache_users)),
            model_poll_s=float(e.get("CLICKSTREAM_MODEL_POLL_S", d.model_poll_s)),
            torch_threads=int(e.get("CLICKSTREAM_TORCH_THREADS", d.torch_threads)),
            log_level=e.get("CLICKSTREAM_LOG_LEVEL", d.log_level),
            max_future_s=float(e.get("CLICKSTREAM_MAX_FUTURE_S", d.max_future_s)),
            instance_id=e.get("CLICKSTREAM_INSTANCE_ID", d.instance_id),
            session_timeout_s=float(e.get("CLICKSTREAM_SESSION_TIMEOUT_S", d.session_timeout_s)),
            standby_replicas=int(e.get("CLICKSTREAM_STANDBY_REPLICAS", d.standby_replicas)),
            breaker_failures=int(e.get("CLICKSTREAM_BREAKER_FAILURES", d.breaker_failures)),
            retrain_interval_s=float(e.get("CLICKSTREAM_RETRAIN_INTERVAL_S", d.retrain_interval_s)),
            retrain_lookback_s=float(e.get("CLICKSTREAM_RETRAIN_LOOKBACK_S", d.retrain_lookback_s)),
            retrain_max_events=int(e.get("CLICKSTREAM_RETRAIN_MAX_EVENTS", d.retrain_max_events)),
            retrain_margin=float(e.get("CLICKSTREAM_RETRAIN_MARGIN", d.retrain_margin)),
            retrain_web_port=int(e.get("CLICKSTREAM_RETRAIN_WEB_PORT", d.retrain_web_port)),
            stall_s=float(e.get("CLICKSTREAM_STALL_S", d.stall_s)),
            security_protocol=e.get("KAFKA_SECURITY_PROTOCOL", d.security_protocol).upper(),
            sasl_mechanism=e.get("KAFKA_SASL_MECHANISM", d.sasl_mechanism).upper(),
            sasl_username=e.get("KAFKA_SASL_USERNAME", d.sasl_username),
            sasl_password=e.get("KAFKA_SASL_PASSWORD", d.sasl_password),
            ssl_cafile=e.get("KAFKA_SSL_CAFILE", d.ssl_cafile),
            ssl_certfile=e.get("KAFKA_SSL_CERTFILE", d.ssl_certfile),
            ssl_keyfile=e.get("KAFKA_SSL_KEYFILE", d.ssl_keyfile),
            pseudonym_key=e.get("CLICKSTREAM_PSEUDONYM_KEY", d.pseudonym_key),
        )
