"""Replay input: reading real logs (Taobao CSV, schema-v1 JSON lines) and the pace schedule. Pure."""

from __future__ import annotations

import orjson
import pytest

from clickstream_tools.replay import LogEvent, read_log, schedule
from stream_app.records import parse_event


def _line(eid: str, user: str, ts, action: str = "view") -> bytes:
    return orjson.dumps({"event_id": eid, "user_id": user, "ts": ts, "action": action, "item_id": "i1"})


def test_jsonl_is_validated_sorted_by_time_and_ties_keep_file_order(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b"\n".join([
        _line("b1", "u2", 1_700_000_010.0),
        _line("a1", "u1", 1_700_000_000.0),
        b"{not json",
        _line("a2", "u1", 1_700_000_010.0),  # same second as b1: after it, as in the file
        _line("x", "u3", 1_700_000_005.0, action="hover"),
        b"",
        _line("a3", "u1", "2023-11-14T22:13:40+00:00"),  # RFC 3339: 1_700_000_020
    ]) + b"\n")
    log = read_log(path)
    assert [parse_event(e.value).event_id for e in log.events] == ["a1", "b1", "a2", "a3"]
    assert [e.ts for e in log.events] == [1_700_000_000.0, 1_700_000_010.0, 1_700_000_010.0,
                                          1_700_000_020.0]
    assert [e.key for e in log.events] == [b"u1", b"u2", b"u1", b"u1"]
    assert log.rejected == 2
    assert log.examples[0].startswith("line 3: invalid_json") and "line 5: invalid_value" in log.examples[1]


def test_taobao_csv_becomes_schema_v1_events(tmp_path):
    path = tmp_path / "UserBehavior.csv"
    path.write_text("7,100,5,pv,1511658001\n8,101,5,cart,1511658000\n7,102,6,buy,1511658001\n")
    log = read_log(path)
    events = [parse_event(e.value, e.key) for e in log.events]  # valid as the worker sees them
    assert [(e.user_id, e.action, e.item_id, e.ts) for e in events] == [
        ("8", "add_to_cart", "101", 1511658000.0), ("7", "view", "100", 1511658001.0),
        ("7", "purchase", "102", 1511658001.0)]
    assert log.rejected == 0


def test_schedule_scales_log_time_by_the_speed():
    evs = [LogEvent(ts, b"u", b"{}") for ts in (100.0, 101.0, 110.0, 160.0)]
    assert [d for _, d in schedule(evs, 1.0)] == [0.0, 1.0, 10.0, 60.0]
    assert [d for _, d in schedule(evs, 10.0)] == [0.0, 0.1, 1.0, 6.0]
    assert [d for _, d in schedule(evs, None)] == [None] * 4
    with pytest.raises(ValueError):
        list(schedule(evs, 0.0))
