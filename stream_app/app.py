"""The faust.App, built from Settings: topics, the one agent, the /metrics page.

`build_app` has no side effects until the app is started by `run_worker`.
"""

from __future__ import annotations

import logging
from typing import Any

import faust
from aiohttp import web as aioweb

from . import __version__
from .agents import EventPipeline
from .config import Settings
from .instruments import Metrics

log = logging.getLogger(__name__)

AGENT_NAME = "clickstream-gru.events"  # explicit: never derived from the function's location


def _raw_topic(app: faust.App, name: str, partitions: int) -> Any:
    # raw bytes in and out: we parse with orjson ourselves, and dead letters keep original bytes
    return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                     value_serializer="raw", partitions=partitions)


def build_app(settings: Settings, metrics: Metrics | None = None) -> faust.App:
    metrics = metrics or Metrics()
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
        processing_guarantee="at_least_once",  # exactly_once has open upstream bugs
    )
    app.metrics_registry = metrics  # type: ignore[attr-defined]
    t = settings.topics
    events = _raw_topic(app, t.events, settings.partitions)
    pipeline = EventPipeline(
        metrics=metrics,
        dead_letters=_raw_topic(app, t.dead_letters, settings.partitions),
        valid_events=_raw_topic(app, t.valid_events, settings.partitions)
        if settings.emit_valid_events else None,
    )
    metrics.info.labels(settings.app_id, __version__).set(1)

    async def process(stream: Any) -> None:
        async for batch in stream.take_events(settings.batch_max, within=settings.batch_within_s):
            pipeline.handle_batch(batch)

    # concurrency 1: higher concurrency can commit past an in-flight message (Faust #606)
    app.agent(events, name=AGENT_NAME, concurrency=1)(process)

    @app.page("/metrics")
    async def metrics_page(self: Any, request: Any) -> Any:
        return aioweb.Response(body=metrics.exposition(),
                               headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    return app


def run_worker(app: faust.App, loglevel: str = "info") -> None:
    """Block running the worker until SIGINT/SIGTERM (Faust's Worker handles both)."""
    worker = faust.Worker(app, loglevel=loglevel, override_logging=False)
    worker.execute_from_commandline()
