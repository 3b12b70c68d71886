"""The retrain worker against the real broker: it reads the events topic by time, judges a
challenger against the champion through step(), promotes only a better one, and records every
cycle; operators promote and roll back from the CLI. Models are tiny (hidden 16, two epochs)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
from kafka import KafkaProducer

from clickstream_tools.broker import free_port
from clickstream_tools.simulator import SimConfig, Storefront
from models.checkpoint import current_version, list_versions, read_cycles, read_history
from stream_app.admin import ensure_topics
from stream_app.config import Settings
from stream_app.model_bus import latest_announcement

from ..modelkit import make_registry
from .helpers import metric_value

PARTITIONS = 3
TINY = ["--hidden", "16", "--epochs", "2", "--batch-tokens", "1024", "--device", "cpu"]


def _env(bootstrap: str, namespace: str, **extra: str) -> dict[str, str]:
    return dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=bootstrap, CLICKSTREAM_NAMESPACE=namespace,
                CLICKSTREAM_PARTITIONS=str(PARTITIONS), PYTHONUNBUFFERED="1", **extra)


def _topic(bootstrap: str, namespace: str) -> str:
    s = Settings(bootstrap=bootstrap, namespace=namespace, partitions=PARTITIONS)
    ensure_topics(bootstrap, {s.topics.events: PARTITIONS})
    return s.topics.events


def _produce(bootstrap: str, topic: str, events: list[dict]) -> None:
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        for e in events:
            p.send(topic, key=e["user_id"].encode(), value=orjson.dumps(e))
        p.send(topic, key=b"u0", value=b"{not json")  # the stream's own gate drops it
        p.flush()
    finally:
        p.close()


def _retrain_once(env: dict[str, str], registry: Path, *extra: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "stream_app.cli", "retrain", "--once",
                        "--model-dir", str(registry), *TINY, *extra],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream_app.cli", *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_worse_challenger_is_not_promoted_and_the_worker_reports_why(kafka_bootstrap, namespace,
                                                                     registry, tmp_path):
    """A margin no challenger can clear: the cycle is rejected, CURRENT and the history stay,
    the reason and both models' numbers are in the cycle log and on /metrics."""
    reg = tmp_path / "registry"
    shutil.copytree(registry, reg)
    champion = current_version(reg)
    topic = _topic(kafka_bootstrap, namespace)
    evs = [e for e, _ in Storefront(SimConfig(users=120, events=3000, seed=3)).events()]
    _produce(kafka_bootstrap, topic, evs)
    port = free_port()
    env = _env(kafka_bootstrap, namespace, CLICKSTREAM_RETRAIN_MARGIN="1.0",
               CLICKSTREAM_RETRAIN_INTERVAL_S="3600", CLICKSTREAM_RETRAIN_WEB_PORT=str(port))
    log_path = tmp_path / "retrain.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "stream_app.cli", "retrain",
                                 "--model-dir", str(reg), *TINY],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        text = ""
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    text = r.read().decode()
            except OSError:
                text = ""
            if metric_value(text, "clickstream_retrain_cycles_total", outcome="rejected"):
                break
            time.sleep(1)
        assert proc.poll() is None, log_path.read_text()[-4000:]
        assert metric_value(text, "clickstream_retrain_cycles_total", outcome="rejected") == 1.0, \
            log_path.read_text()[-4000:]
        assert metric_value(text, "clickstream_retrain_cycles_total", outcome="promoted") == 0.0
        assert metric_value(text, "clickstream_retrain_cycles_total", outcome="failed") == 0.0
        for name in ("clickstream_retrain_last_run_timestamp_seconds",
                     "clickstream_retrain_last_success_timestamp_seconds",
                     "clickstream_retrain_duration_seconds"):
            assert (metric_value(text, name) or 0) > 0, name
        for model in ("champion", "challenger"):
            for metric in ("item_hit_at_20", "item_mrr_at_20", "action_log_loss"):
                assert metric_value(text, "clickstream_retrain_eval", model=model,
                                    metric=metric) is not None, (model, metric)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            health = json.loads(r.read())
        assert r.status == 200 and health["last_cycle"]["outcome"] == "rejected"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert current_version(reg) == champion and list_versions(reg) == list_versions(registry)
    assert read_history(reg) == []
    (cycle,) = read_cycles(reg)
    assert cycle["outcome"] == "rejected" and "not better by the margin 1.0" in cycle["reason"]
    assert cycle["champion_version"] == champion
    assert cycle["window"]["events"] == len(evs) and cycle["window"]["rejected"] == 1
    assert cycle["metrics"]["champion"]["n_item"] == cycle["metrics"]["challenger"]["n_item"] > 50


def _drifting_store(period: float) -> tuple[list[dict], list[dict]]:
    """Phase 0 (the store as it was) and phase 1 (after the drift) of one simulated stream."""
    cfg = SimConfig(users=250, events=100_000, seed=11, items=400, categories=16,
                    drift_every_s=period, drift_strength=1.0)
    before, after = [], []
    for e, _ in Storefront(cfg).events():
        if e["ts"] >= cfg.start_ts + 2 * period:
            break
        (before if e["ts"] < cfg.start_ts + period else after).append(e)
    return before, after


def test_after_drift_a_retrain_promotes_a_challenger_that_ranks_better(kafka_bootstrap, namespace,
                                                                      tmp_path, capsys):
    """The first cycle on an empty registry gives birth to the champion (pre-drift traffic); the
    store drifts; the next cycle's challenger is promoted, with a higher hit@20 on the drifted,
    held-out slice than the champion's."""
    reg = tmp_path / "registry"
    topic = _topic(kafka_bootstrap, namespace)
    before, after = _drifting_store(period=10 * 3600.0)
    assert len(before) > 2500 and len(after) > 2500
    env = _env(kafka_bootstrap, namespace, CLICKSTREAM_RETRAIN_MAX_EVENTS=str(len(after) + 1000))
    _produce(kafka_bootstrap, topic, before)
    r = _retrain_once(env, reg)
    assert r.stdout.startswith("promoted: no champion"), r.stdout
    champion = current_version(reg)
    assert champion is not None
    _produce(kafka_bootstrap, topic, after)
    r = _retrain_once(env, reg)
    cycles = read_cycles(reg)
    last = cycles[-1]
    champ, chall = last["metrics"]["champion"], last["metrics"]["challenger"]
    with capsys.disabled():
        print(f"\n[drift retrain] held-out drifted slice ({chall['n_item']} item predictions, "
              f"through step()): champion hit@20 {champ['item_hit_at_20']:.4f} "
              f"MRR@20 {champ['item_mrr_at_20']:.4f} action log loss "
              f"{champ['action_log_loss']:.4f}; challenger hit@20 {chall['item_hit_at_20']:.4f} "
              f"MRR@20 {chall['item_mrr_at_20']:.4f} action log loss "
              f"{chall['action_log_loss']:.4f}")
    assert last["outcome"] == "promoted", last["reason"]
    assert chall["item_hit_at_20"] > champ["item_hit_at_20"]
    # the window was bounded by max events, newest first, across every partition
    assert last["window"]["events"] <= len(after) + 1000 + PARTITIONS
    assert last["window"]["events"] > len(after)
    # judged on events neither model trained or early-stopped on
    assert last["metrics"]["judged_from_ts"] >= after[0]["ts"]
    new = current_version(reg)
    assert new != champion and new == last["version"]
    h = read_history(reg)
    assert [(e["version"], e["previous"], e["actor"]) for e in h] == [
        (champion, None, "retrain"), (new, champion, "retrain")]
    assert h[-1]["metrics"]["challenger"]["item_hit_at_20"] == chall["item_hit_at_20"]
    assert [c["outcome"] for c in cycles] == ["promoted", "promoted"]
    # ... and announced to the fleet on the model bus, with the retrain worker's reason
    s = Settings(bootstrap=kafka_bootstrap, namespace=namespace, partitions=PARTITIONS)
    news = latest_announcement(s)
    assert news is not None and news["version"] == new and news["by"] == "retrain"
    assert news["reason"] == last["reason"]
    # an operator's rollback from the CLI is announced too
    r = _cli("models", "rollback", "--model-dir", str(reg), "--user", "carol", "--reason", "check",
             env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    news = latest_announcement(s)
    assert current_version(reg) == champion and news is not None
    assert (news["version"], news["by"], news["reason"]) == (champion, "operator:carol",
                                                           "rollback: check")


def test_operators_promote_and_roll_back_from_the_cli(registry, tmp_path):
    reg = tmp_path / "registry"
    shutil.copytree(registry, reg)
    first = current_version(reg)
    second = make_registry(reg, users=60, events=1500, seed=5)
    assert current_version(reg) == first
    r = _cli("models", "promote", second, "--model-dir", str(reg), "--user", "alice",
             "--reason", "campaign week", "--local")
    assert r.returncode == 0, r.stderr
    assert current_version(reg) == second
    r = _cli("models", "list", "--model-dir", str(reg))
    assert r.returncode == 0 and f"* {second}" in r.stdout and "operator:alice" in r.stdout
    r = _cli("models", "show", second, "--model-dir", str(reg))
    shown = json.loads(r.stdout)
    assert shown["current"] and shown["history"][0]["reason"] == "campaign week"
    r = _cli("models", "rollback", "--model-dir", str(reg), "--user", "bob", "--reason", "worse",
             "--local")
    assert r.returncode == 0, r.stderr
    assert current_version(reg) == first
    assert [(e["kind"], e["version"], e["previous"], e["actor"]) for e in read_history(reg)] == [
        ("promote", second, first, "operator:alice"), ("rollback", first, second, "operator:bob")]
    r = _cli("models", "rollback", "--model-dir", str(reg), "--local")
    assert r.returncode == 2 and "nothing to roll back" in r.stderr
    assert current_version(reg) == first
    # a torn artifact is refused and CURRENT stays
    w = reg / "versions" / second / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:-8] + b"XXXXXXXX")
    r = _cli("models", "promote", second, "--model-dir", str(reg), "--local")
    assert r.returncode == 2 and "checksum" in r.stderr
    assert current_version(reg) == first
