"""The faust.App, built from Settings: topics, the state table, the one agent, timers, /metrics.

`build_app` has no side effects until the app is started by `run_worker`.
"""

from __future__ import annotations

import logging
from typing import Any

import faust
from aiohttp import web as aioweb

from . import __version__, pseudonymisation
from .agents import Delivery, EventPipeline, IdleSweep, PendingRows
from .batching import batches, behind_broker
from .config import Settings
from .health import Health, agent_status, input_positions
from .instruments import Metrics
from .model_bus import ModelFollower
from .offsets import LedgerTransport, OffsetLedger
from .predictor import Predictor
from .tables import StateTable

log = logging.getLogger(__name__)
PRODUCER_BATCH_BYTES = 512 * 1024  # see producer_max_batch_size below

# Stateful names: part of the data, never derived from where a function lives.
AGENT_NAME = "clickstream-gru.events"
STATE_TABLE = "user-state"  # changelog topic: "<app_id>-user-state-changelog"


class ClickstreamApp(faust.App):
    """A faust.App whose consumer commits the offset ledger's position (offsets.py)."""

    ledger: OffsetLedger
    fetch_max_wait_ms: int | None = None  # offsets.ShortPollConsumerThread

    def _new_transport(self) -> Any:
        return LedgerTransport(self.conf.broker_consumer, self)


def _raw_topic(app: faust.App, name: str, partitions: int) -> Any:
    # raw bytes in and out: we parse with orjson ourselves, and dead letters keep original bytes
    return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                     value_serializer="raw", partitions=partitions)


def build_app(settings: Settings, predictor: Predictor, metrics: Metrics | None = None) -> faust.App:
    metrics = metrics or Metrics()
    if settings.window_events < predictor.model.cfg.window:
        raise ValueError(f"window_events={settings.window_events} is smaller than the model's "
                         f"window ({predictor.model.cfg.window})")
    app = ClickstreamApp(
        settings.app_id,
        broker=f"kafka://{settings.bootstrap}",
        store=settings.store,
        datadir=str(settings.data_dir),
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        table_standby_replicas=settings.standby_replicas,
        consumer_auto_offset_reset="earliest",
        consumer_group_instance_id=settings.group_instance_id,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(settings.session_timeout_s / 5, 0.5),
        broker_commit_interval=1.0,
        producer_acks=-1,
        producer_linger_ms=settings.producer_linger_ms,
        # a micro-batch's records for one partition go as one producer batch (batch_send.py):
        # room for a full batch of predictions (512 x ~0.6 KB) under the broker's 1 MiB limit
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
        processing_guarantee="at_least_once",  # exactly_once has open upstream bugs
        broker_credentials=settings.faust_credentials(),  # SASL/SSL from the environment
    )
    app.ledger = OffsetLedger()
    app.fetch_max_wait_ms = settings.fetch_max_wait_ms
    t = settings.topics
    # use_partitioner=False: a row lives in (and its changelog goes to) the partition of the
    # events that made it; StateTable names that partition explicitly
    table = StateTable(app.Table(STATE_TABLE, key_type=bytes, value_type=bytes,
                                 partitions=settings.partitions))
    pipeline = EventPipeline(  # reads through the rows of batches still being delivered
        metrics=metrics, predictor=predictor, table=PendingRows(table),
        limits=settings.window_limits(),
        dead_letters=t.dead_letters, next_action=t.next_action, churn=t.churn,
        valid_events=t.valid_events if settings.emit_valid_events else None,
        max_future_s=settings.max_future_s, breaker_failures=settings.breaker_failures,
        pseudonymise=pseudonymisation.from_key(settings.pseudonym_key),
    )
    delivery = Delivery(app=app, pipeline=pipeline, ledger=app.ledger, metrics=metrics,
                        bootstrap=settings.bootstrap, client_kwargs=settings.kafka_client_kwargs(),
                        max_in_flight=settings.in_flight_batches)
    events = _raw_topic(app, t.events, settings.partitions)
    metrics.info.labels(settings.app_id, __version__).set(1)
    metrics.set_model(predictor.version, str(predictor.device))

    async def process(stream: Any) -> None:
        # events are acknowledged by Delivery only after their outputs are on the broker;
        # batches follow the load (batching.py): small when idle, full when behind
        async for batch in batches(stream, max_events=settings.batch_max,
                                   max_wait_s=settings.batch_within_s, idle_s=settings.batch_idle_s,
                                   behind=behind_broker(app.consumer),
                                   behind_wait_s=settings.batch_behind_within_s):
            await delivery.run(stream, batch)

    # concurrency 1: higher concurrency can commit past an in-flight message (Faust #606)
    app.agent(events, name=AGENT_NAME, concurrency=1)(process)

    def _rebalanced(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        delivery.reset()  # positions start again from the committed offsets

    app.on_partitions_revoked.connect(_rebalanced)
    app.on_partitions_assigned.connect(_rebalanced)

    sweep = IdleSweep(app=app, table=table, delivery=delivery, window_s=settings.window_seconds,
                      max_future_s=settings.max_future_s, metrics=metrics,
                      forget=lambda row: predictor.cache.forget(row),  # the cache of the day
                      churn_horizon=lambda: predictor.model.cfg.churn_horizon_s)

    @app.timer(settings.sweep_interval_s)
    async def expire_idle_users() -> None:
        await sweep.run()

    # model versions (model_bus.py): announcements on the updates topic (the fleet path), and the
    # local registry's CURRENT (single machine); verified off the loop, swapped between batches
    follower = ModelFollower(settings, predictor, metrics)

    @app.task
    async def follow_model_bus() -> None:
        await follower.follow_bus()

    @app.timer(settings.model_poll_s)
    async def follow_model_registry() -> None:
        await follower.follow_registry()

    cache_seen = {"hit": 0, "miss": 0}
    health = Health(settings.stall_s)  # /health, /ready (health.py)

    @app.timer(2.0)
    async def export_gauges() -> None:
        cache = predictor.cache
        for name, now in (("hit", cache.hits), ("miss", cache.misses)):
            metrics.cache_lookups.labels(name).inc(max(now - cache_seen[name], 0))
            cache_seen[name] = now
        health.observe(*input_positions(app, t.events, pipeline.offsets))
        metrics.consumer_lag.clear()  # partitions lost in a rebalance must not linger as series
        for part, lag in health.lags().items():
            metrics.consumer_lag.labels(str(part)).set(lag)

    @app.page("/metrics")
    async def metrics_page(self: Any, request: Any) -> Any:
        return aioweb.Response(body=metrics.exposition(),
                               headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    @app.page("/health")
    async def health_page(self: Any, request: Any) -> Any:
        v = health.liveness(agent_status(app, AGENT_NAME))
        return aioweb.Response(status=v.status, body=v.body(), content_type="application/json")

    @app.page("/ready")
    async def ready_page(self: Any, request: Any) -> Any:
        health.observe(*input_positions(app, t.events, pipeline.offsets))
        v = health.readiness(health.lags().keys(), agent_status(app, AGENT_NAME))
        return aioweb.Response(status=v.status, body=v.body(), content_type="application/json")

    return app


def run_worker(app: faust.App, loglevel: str = "info") -> None:
    """Block running the worker until SIGINT/SIGTERM (Faust's Worker handles both)."""
    worker = faust.Worker(app, loglevel=loglevel, override_logging=False)
    worker.execute_from_commandline()
