"""`stream-app replay` against the real broker: count, per-user order, paced record timestamps,
the CLI on a slice of the real Taobao log, and a clear error (no spinning) when no broker answers."""

from __future__ import annotations

import collections
import os
import subprocess
import sys

import orjson
import pytest

from clickstream_tools.broker import free_port
from clickstream_tools.replay import ReplayError, read_log, replay
from clickstream_tools.sources import SHARED
from stream_app.config import Settings

from .helpers import read_topic

pytestmark = pytest.mark.integration


def _by_user(records) -> dict[str, list[str]]:
    """user -> event ids in the order the broker holds them (a user lives in one partition)."""
    out = collections.defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        d = orjson.loads(r.value)
        assert r.key.decode() == d["user_id"]
        out[d["user_id"]].append(d["event_id"])
    return out


def test_replay_keeps_count_and_user_order_and_scales_event_time(kafka_bootstrap, namespace, tmp_path):
    # 3 users interleaved over 12 s of log time, with same-second ties
    rows, t0 = [], 1_700_000_000.0
    for i in range(36):
        rows.append({"event_id": f"e{i:02d}", "user_id": f"u{i % 3}", "ts": t0 + i // 3,
                     "action": "view", "item_id": f"i{i}"})
    path = tmp_path / "log.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    s = Settings(bootstrap=kafka_bootstrap, namespace=namespace, partitions=2)
    from stream_app.admin import ensure_topics, topic_specs

    ensure_topics(kafka_bootstrap, topic_specs(s))
    speed = 10.0
    report = replay(s, read_log(path), speed)
    assert report.sent == 36 and report.rejected == 0 and report.log_seconds == 11.0

    recs = read_topic(kafka_bootstrap, s.topics.events, 36)
    assert len(recs) == 36
    want = collections.defaultdict(list)
    for r in rows:
        want[r["user_id"]].append(r["event_id"])
    assert _by_user(recs) == want
    # record timestamps = the log's event times scaled by 1/speed, shifted to the replay's start
    ts_of = {r["event_id"]: r["ts"] for r in rows}
    first = min(recs, key=lambda r: ts_of[orjson.loads(r.value)["event_id"]]).timestamp
    for r in recs:
        scaled_ms = (ts_of[orjson.loads(r.value)["event_id"]] - t0) / speed * 1000
        assert abs((r.timestamp - first) - scaled_ms) <= 1


def test_cli_replays_a_slice_of_the_taobao_log_as_fast_as_possible(kafka_bootstrap, namespace, tmp_path):
    lines = (SHARED / "taobao_slice" / "UserBehavior.csv").read_text().splitlines()[:3000]
    path = tmp_path / "UserBehavior.csv"
    path.write_text("\n".join(lines) + "\n")
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, CLICKSTREAM_NAMESPACE=namespace,
               CLICKSTREAM_PARTITIONS="4")
    proc = subprocess.run([sys.executable, "-m", "stream_app.cli", "replay", str(path), "--speed", "max"],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sent 3000 events" in proc.stdout
    recs = read_topic(kafka_bootstrap, f"{namespace}clickstream.events", 3000)
    assert len(recs) == 3000
    want = collections.defaultdict(list)
    for n, line in enumerate(lines):
        want[line.split(",")[0]].append(f"tb{n}")  # the file is in time order
    assert _by_user(recs) == want


def test_replay_without_a_broker_stops_with_a_clear_error(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(orjson.dumps({"event_id": "e", "user_id": "u", "ts": 1_700_000_000.0,
                                   "action": "view", "item_id": "i"}))
    s = Settings(bootstrap=f"127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises((ReplayError, RuntimeError), match="not reachable"):
        replay(s, read_log(path), None, connect_attempts=2)
