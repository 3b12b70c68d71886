"""The faust.App, built from Settings: topics, the state table, the one agent, timers, /metrics.

`build_app` has no side effects until the app is started by `run_worker`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
from aiohttp import web as aioweb

from . import __version__
from .agents import EventPipeline
from .config import Settings
from .instruments import Metrics
from .predictor import Predictor
from .state import StateLimits, last_seen_of

log = logging.getLogger(__name__)

# Stateful names: part of the data, never derived from where a function lives.
AGENT_NAME = "clickstream-gru.events"
STATE_TABLE = "user-state"  # changelog topic: "<app_id>-user-state-changelog"


def _raw_topic(app: faust.App, name: str, partitions: int) -> Any:
    # raw bytes in and out: we parse with orjson ourselves, and dead letters keep original bytes
    return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                     value_serializer="raw", partitions=partitions)


def build_app(settings: Settings, predictor: Predictor, metrics: Metrics | None = None) -> faust.App:
    metrics = metrics or Metrics()
    if settings.window_events < predictor.model.cfg.window:
        raise ValueError(f"window_events={settings.window_events} is smaller than the model's "
                         f"window ({predictor.model.cfg.window})")
    app = faust.App(
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
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        producer_acks=-1,
        producer_linger_ms=settings.producer_linger_ms,
        processing_guarantee="at_least_once",  # exactly_once has open upstream bugs
    )
    t = settings.topics
    # use_partitioner: the changelog partition comes from the key (Kafka's default partitioner,
    # the same the storefronts' producers use: the agent dead-letters events where that does not
    # hold), so the idle sweep can delete rows without an event in hand.
    table = app.Table(STATE_TABLE, key_type=bytes, value_type=bytes,  # bytes => raw serializers
                      partitions=settings.partitions, use_partitioner=True)
    pipeline = EventPipeline(
        metrics=metrics, predictor=predictor, table=table,
        limits=StateLimits(settings.window_events, settings.window_seconds),
        partitions=settings.partitions,
        dead_letters=_raw_topic(app, t.dead_letters, settings.partitions),
        next_action=t.next_action, churn=t.churn,
        valid_events=t.valid_events if settings.emit_valid_events else None,
    )
    outputs = {name: _raw_topic(app, name, settings.partitions)
               for name in (t.next_action, t.churn, t.valid_events)}
    app.pipeline = pipeline  # type: ignore[attr-defined]
    events = _raw_topic(app, t.events, settings.partitions)
    metrics.info.labels(settings.app_id, __version__).set(1)
    metrics.set_model(predictor.version, str(predictor.device))

    async def process(stream: Any) -> None:
        async for batch in stream.take_events(settings.batch_max, within=settings.batch_within_s):
            # send_soon appends synchronously to Faust's buffer, which Faust flushes before it
            # commits: no await here, so a cancellation cannot split a batch's predictions
            for topic, messages in pipeline.handle_batch(batch).items():
                send = outputs[topic].send_soon
                for key, value in messages:
                    send(key=key, value=value)

    # concurrency 1: higher concurrency can commit past an in-flight message (Faust #606)
    app.agent(events, name=AGENT_NAME, concurrency=1)(process)

    @app.timer(settings.sweep_interval_s)
    async def expire_idle_users() -> None:
        """Delete users idle for longer than the window (event time), and measure state."""
        cutoff = pipeline.watermark - settings.window_seconds
        n = size = 0
        expired = []
        for i, key in enumerate(list(table.keys())):
            raw = table.get(key)
            if raw is None:
                continue
            n += 1
            size += len(raw)
            if last_seen_of(raw) < cutoff:
                expired.append(key)
            if i % 2000 == 1999:
                await asyncio.sleep(0)  # let the agent run during a long sweep
        for key in expired:
            if key in table and last_seen_of(table[key]) < cutoff:  # unless it came back meanwhile
                del table[key]
                pipeline.forget(key)
        metrics.expired_users.inc(len(expired))
        metrics.active_users.set(n - len(expired))
        metrics.state_bytes.set(size)
        if expired:
            log.info("expired %d idle users (last seen before %.0f)", len(expired), cutoff)

    @app.timer(settings.model_poll_s)
    async def follow_model_registry() -> None:
        if predictor.maybe_reload():
            metrics.set_model(predictor.version, str(predictor.device))

    cache_seen = {"hit": 0, "miss": 0}

    @app.timer(2.0)
    async def export_gauges() -> None:
        cache = predictor.cache
        for name, now in (("hit", cache.hits), ("miss", cache.misses)):
            metrics.cache_lookups.labels(name).inc(max(now - cache_seen[name], 0))
            cache_seen[name] = now
        lags = {}
        for tp in app.consumer.assignment():
            if tp.topic != t.events:
                continue
            hw = app.consumer.highwater(tp)
            if hw is not None:
                lags[str(tp.partition)] = max(hw - (pipeline.offsets.get(tp.partition, -1) + 1), 0)
        metrics.consumer_lag.clear()  # partitions lost in a rebalance must not linger as series
        for part, lag in lags.items():
            metrics.consumer_lag.labels(part).set(lag)

    @app.page("/metrics")
    async def metrics_page(self: Any, request: Any) -> Any:
        return aioweb.Response(body=metrics.exposition(),
                               headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    return app


def run_worker(app: faust.App, loglevel: str = "info") -> None:
    """Block running the worker until SIGINT/SIGTERM (Faust's Worker handles both)."""
    worker = faust.Worker(app, loglevel=loglevel, override_logging=False)
    worker.execute_from_commandline()
