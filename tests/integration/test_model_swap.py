"""Fleet-wide hot swap over the model bus (model_bus.py) and online evaluation, against the real
broker: workers that share no registry directory with the announcer (or with each other)."""

from __future__ import annotations

import collections
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from kafka import KafkaProducer

from clickstream_tools.simulator import SimConfig, Storefront
from models.checkpoint import current_version, set_current
from models.features import WindowLimits
from stream_app.admin import ensure_topics, topic_specs
from stream_app.config import Settings
from stream_app.model_bus import announce, pack, publish

from ..modelkit import make_registry, offline_predictions
from .helpers import metric_value, read_topic, start_worker

pytestmark = pytest.mark.integration

WINDOW = 20  # CLICKSTREAM_WINDOW_EVENTS (the default): what a swap rebuilds hidden states from
ENV = {"CLICKSTREAM_PARTITIONS": "4", "CLICKSTREAM_WINDOW_SECONDS": "1e9"}
LIMITS = WindowLimits(WINDOW, 1e9)  # what ENV makes the worker keep: the references use it too


def _event_id(record) -> str:
    return orjson.loads(record.value)["event_id"]


def _wait_for(what, check, timeout=180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _serving(worker, version) -> bool:
    text = worker.metrics_text()
    return any(metric_value(text, "clickstream_model_info", version=version, device=d) == 1.0
               for d in ("cpu",))


class Feeder:
    """Sends events continuously from a thread until stopped (load while a swap happens)."""

    def __init__(self, bootstrap: str, topic: str, events: list[dict], chunk: int = 20,
                 pause_s: float = 0.02) -> None:
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
        self.topic, self.events, self.chunk, self.pause_s = topic, events, chunk, pause_s
        self.sent = 0
        self.stop_at: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while self.sent < len(self.events) and (self.stop_at is None or self.sent < self.stop_at):
            for e in self.events[self.sent:self.sent + self.chunk]:
                self.producer.send(self.topic, key=e["user_id"].encode(), value=orjson.dumps(e))
            self.producer.flush()
            self.sent = min(self.sent + self.chunk, len(self.events))
            time.sleep(self.pause_s)

    def finish(self, more: int) -> int:
        """Send `more` events beyond those sent so far, then stop; returns the number sent."""
        self.stop_at = self.sent + more
        self.thread.join(timeout=300)
        assert not self.thread.is_alive(), "the feeder did not finish"
        self.producer.close()
        return self.sent


def _author(registry: Path, tmp: Path) -> tuple[Path, str, str]:
    """The announcer's registry (the retrain worker's machine): v1 (as the workers have) and v2."""
    author = tmp / "author-registry"
    shutil.copytree(registry, author)
    v1 = current_version(author)
    assert v1 is not None
    v2 = make_registry(author, seed=8)
    set_current(author, v2)
    return author, v1, v2


def test_swap_under_load_switches_between_batches_and_serves_the_new_model(kafka_bootstrap, namespace,
                                                                           tmp_path, registry):
    s = Settings(bootstrap=kafka_bootstrap, namespace=namespace, partitions=4)
    ensure_topics(kafka_bootstrap, topic_specs(s))
    author, v1, v2 = _author(registry, tmp_path)
    served = tmp_path / "worker-registry"  # no disk shared with the announcer
    shutil.copytree(registry, served)
    events = [e for e, _ in Storefront(SimConfig(users=60, events=30_000, seed=11)).events()]
    worker = start_worker(kafka_bootstrap, namespace, tmp_path, env=ENV,
                          extra_args=["--model-dir", str(served), "--device", "cpu"])
    feeder = Feeder(kafka_bootstrap, s.topics.events, events)
    try:
        feeder.thread.start()
        _wait_for("events before the swap", lambda: feeder.sent >= 800)
        announce(s, author, v2, reason="test promotion")
        _wait_for("the worker to serve v2", lambda: _serving(worker, v2))
        n = feeder.finish(more=800)
        assert n < len(events), "the stream must still flow after the swap"
        na = read_topic(kafka_bootstrap, s.topics.next_action, n, timeout=180, distinct=_event_id)
        ch = read_topic(kafka_bootstrap, s.topics.churn, n, timeout=60, distinct=_event_id)
        metrics = worker.metrics_text()
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
    sent = events[:n]
    preds = {}
    for r in na:
        d = orjson.loads(r.value)
        assert not d["replayed"]
        preds[d["event_id"]] = (d, r.partition)
    assert set(preds) == {e["event_id"] for e in sent}  # every event got its predictions
    assert {_event_id(r) for r in ch} == set(preds)
    assert current_version(served) == v2  # the local CURRENT follows what is served
    # all predictions of one batch (one emission time) share a version; per partition the version
    # switches once, from v1 to v2
    by_batch = collections.defaultdict(set)
    for d, _ in preds.values():
        by_batch[d["emitted_ts"]].add(d["model_version"])
    assert all(len(v) == 1 for v in by_batch.values())
    for part in range(4):
        seq = [orjson.loads(r.value)["model_version"] for r in na if r.partition == part]
        switch = seq.index(v2) if v2 in seq else len(seq)
        assert set(seq[:switch]) <= {v1} and set(seq[switch:]) <= {v2}
    versions = {d["model_version"] for d, _ in preds.values()}
    assert versions == {v1, v2}
    # before the swap: v1 over the user's whole history; after it: v2 over the window it rebuilt
    # from (the WINDOW events before the user's first v2 prediction), then step by step
    by_user = collections.defaultdict(list)
    for e in sent:
        by_user[e["user_id"]].append(e)
    ref1 = offline_predictions(served, sent, version=v1, limits=LIMITS)
    rebuilt, checked = [], []
    for evs in by_user.values():
        first = next((i for i, e in enumerate(evs) if preds[e["event_id"]][0]["model_version"] == v2),
                     len(evs))
        rebuilt += evs[max(0, first - WINDOW):]
        checked += evs[first:]
        for e in evs[:first]:
            _same(preds[e["event_id"]][0], ref1[e["event_id"]])
    ref2 = offline_predictions(author, rebuilt, version=v2, limits=LIMITS)
    assert len(checked) > 100
    for e in checked:
        _same(preds[e["event_id"]][0], ref2[e["event_id"]])
    # online evaluation moved, per version: every event but each user's first scored a prediction
    scored = {v: metric_value(metrics, "clickstream_online_scored_total", model_version=v, kind="action")
              for v in (v1, v2)}
    assert scored[v1] and scored[v2] and sum(scored.values()) == n - len(by_user)
    hits = metric_value(metrics, "clickstream_online_item_hits_total", model_version=v2)
    item_scored = metric_value(metrics, "clickstream_online_scored_total", model_version=v2, kind="item")
    assert hits is not None and item_scored and 0 <= hits <= item_scored


def _same(got: dict, ref: tuple) -> None:
    probs, churn, top = ref
    np.testing.assert_allclose([got["action_probs"][a] for a in got["action_probs"]], probs, atol=1e-5)
    np.testing.assert_allclose([x["score"] for x in got["top_items"]], top, atol=1e-5)


def _send_tagged(bootstrap, topic, tag: str, users: int = 30, per_user: int = 4) -> set[str]:
    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    ids = set()
    now = time.time()
    for u in range(users):
        for k in range(per_user):
            eid = f"{tag}-{u}-{k}"
            ids.add(eid)
            e = {"event_id": eid, "user_id": f"user{u}", "ts": now + k, "action": "view",
                 "item_id": f"i{(u + k) % 50}"}
            p.send(topic, key=e["user_id"].encode(), value=orjson.dumps(e))
    p.flush()
    p.close()
    return ids


def _versions_of(bootstrap, s, ids: set[str], seen: int) -> set[str]:
    na = read_topic(bootstrap, s.topics.next_action, seen + len(ids), timeout=120, distinct=_event_id)
    got = {}
    for r in na:
        d = orjson.loads(r.value)
        if d["event_id"] in ids:
            got[d["event_id"]] = d["model_version"]
    assert set(got) == ids  # serving continued: every event was predicted
    return set(got.values())


def test_two_workers_without_shared_disk_follow_announcements_refuse_corruption_and_roll_back(
        kafka_bootstrap, namespace, tmp_path, registry):
    s = Settings(bootstrap=kafka_bootstrap, namespace=namespace, partitions=4)
    ensure_topics(kafka_bootstrap, topic_specs(s))
    author, v1, v2 = _author(registry, tmp_path)
    announce(s, author, v1, reason="first deployment")
    a_reg = tmp_path / "registry-a"
    shutil.copytree(registry, a_reg)
    b_reg = tmp_path / "registry-b"  # empty: a new machine gets the announced version from Kafka
    args = ["--device", "cpu"]
    wa = start_worker(kafka_bootstrap, namespace, tmp_path, env=ENV, data_dir=tmp_path / "data-a",
                      extra_args=[*args, "--model-dir", str(a_reg)])
    wb = start_worker(kafka_bootstrap, namespace, tmp_path, env=ENV, data_dir=tmp_path / "data-b",
                      extra_args=[*args, "--model-dir", str(b_reg)])
    workers = (wa, wb)
    try:
        assert current_version(b_reg) == v1 and all(_serving(w, v1) for w in workers)
        seen = 0
        ids = _send_tagged(kafka_bootstrap, s.topics.events, "before")
        assert _versions_of(kafka_bootstrap, s, ids, seen) == {v1}
        seen += len(ids)

        announce(s, author, v2, reason="promotion")  # one announcement, both workers switch
        for w in workers:
            _wait_for("v2 in every worker", lambda w=w: _serving(w, v2))
        ids = _send_tagged(kafka_bootstrap, s.topics.events, "promoted")
        assert _versions_of(kafka_bootstrap, s, ids, seen) == {v2}
        seen += len(ids)

        # a corrupted artifact of a new version: refused everywhere, v2 keeps serving
        v3 = make_registry(author, users=40, events=800, seed=13)
        blob, manifest = pack(author, v3)
        bad = bytearray(blob)
        bad[-100] ^= 0xFF
        publish(s, v3, manifest, bytes(bad), reason="corrupted on purpose")
        for w in workers:
            _wait_for("the refusal", lambda w=w: metric_value(
                w.metrics_text(), "clickstream_model_load_failures_total") == 1.0)
            assert _serving(w, v2) and "refusing model version" in w.log()
        assert not (a_reg / "versions" / v3).exists() and not (b_reg / "versions" / v3).exists()
        ids = _send_tagged(kafka_bootstrap, s.topics.events, "refused")
        assert _versions_of(kafka_bootstrap, s, ids, seen) == {v2}
        seen += len(ids)

        set_current(author, v1)  # rollback: the previous version again, in running workers
        announce(s, author, v1, reason="rollback")
        for w in workers:
            _wait_for("v1 back in every worker", lambda w=w: _serving(w, v1))
        ids = _send_tagged(kafka_bootstrap, s.topics.events, "rolled-back")
        assert _versions_of(kafka_bootstrap, s, ids, seen) == {v1}
        assert current_version(a_reg) == current_version(b_reg) == v1
    finally:
        for w in workers:
            assert w.stop() == 0, w.log()[-3000:]


def test_a_worker_whose_current_version_is_damaged_starts_with_the_announced_one(
        kafka_bootstrap, namespace, tmp_path, registry):
    s = Settings(bootstrap=kafka_bootstrap, namespace=namespace, partitions=4)
    ensure_topics(kafka_bootstrap, topic_specs(s))
    v1 = current_version(registry)
    assert v1 is not None
    announce(s, registry, v1, reason="in service")
    reg = tmp_path / "damaged-registry"  # CURRENT names a damaged copy; no history, no v1
    shutil.copytree(registry / "versions" / v1, reg / "versions" / "broken")
    w = reg / "versions" / "broken" / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:-8] + b"\xff" * 8)
    set_current(reg, "broken")
    worker = start_worker(kafka_bootstrap, namespace, tmp_path, env=ENV,
                          extra_args=["--model-dir", str(reg), "--device", "cpu"])
    try:
        assert _serving(worker, v1) and current_version(reg) == v1
        assert metric_value(worker.metrics_text(), "clickstream_model_load_failures_total") == 1.0
        ids = _send_tagged(kafka_bootstrap, s.topics.events, "after-start")
        assert _versions_of(kafka_bootstrap, s, ids, 0) == {v1}
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
    assert "refusing model version broken at start" in worker.log()


def test_artifacts_beyond_the_brokers_default_message_size_travel_whole(kafka_bootstrap, namespace):
    """A real model is megabytes (516 bytes per item at width 128); the broker's default limit is
    1 MiB. The artifacts topic, the producer and the consumer are set up for 64 MiB."""
    from stream_app.model_bus import fetch_artifact, latest_announcement

    s = Settings(bootstrap=kafka_bootstrap, namespace=namespace, partitions=4)
    blob = os.urandom(12 * 1024 * 1024)
    a = publish(s, "big-version", {"weights_sha256": "x"}, blob, reason="size check")
    assert latest_announcement(s) == a
    assert fetch_artifact(s, a) == blob
    again = publish(s, "big-version", {"weights_sha256": "x"}, blob[::-1])  # re-announced: new bytes
    assert fetch_artifact(s, again) == blob[::-1] and fetch_artifact(s, a) == blob
