"""Liveness and readiness decisions (stream_app/health.py), on a hand-driven clock."""

from __future__ import annotations

import orjson

from stream_app.config import Settings
from stream_app.health import AgentStatus, Health

RUNNING = AgentStatus(running=True)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(stall_s: float = 60.0) -> tuple[Health, Clock]:
    clock = Clock()
    return Health(stall_s, clock=clock), clock


def test_stall_setting_from_env():
    assert Settings().stall_s == 60.0
    assert Settings.from_env({"CLICKSTREAM_STALL_S": "7.5"}).stall_s == 7.5


def test_live_unless_crashed():
    h, _ = make()
    assert h.liveness(AgentStatus(running=False)).status == 200  # starting is alive
    v = h.liveness(AgentStatus(running=False, crashed="agent: RuntimeError('boom')"))
    assert v.status == 503 and "boom" in v.reason
    assert orjson.loads(v.body())["status"] == "fail"


def test_ready_needs_running_agent_and_partitions():
    h, _ = make()
    v = h.readiness([], RUNNING)
    assert v.status == 503 and "no input partitions" in v.reason
    h.observe({0: 5}, {0: 5})
    v = h.readiness([0], AgentStatus(running=False))
    assert v.status == 503 and "not running" in v.reason
    v = h.readiness([0], AgentStatus(running=False, crashed="app: x"))
    assert v.status == 503 and "crashed" in v.reason
    v = h.readiness([0], RUNNING)
    assert v.status == 200
    assert orjson.loads(v.body()) == {"status": "ok", "reason": v.reason, "partitions": [0], "lag": 0}


def test_lag_without_progress_for_stall_s_is_a_stall():
    h, clock = make(stall_s=60)
    h.observe({0: 10, 1: 0}, {0: 50, 1: 0})
    clock.t += 59
    h.observe({0: 10, 1: 0}, {0: 80, 1: 0})
    assert h.readiness([0, 1], RUNNING).status == 200  # not yet stall_s without progress
    clock.t += 1
    v = h.readiness([0, 1], RUNNING)
    assert v.status == 503 and "stalled" in v.reason
    body = orjson.loads(v.body())
    assert body["stalled"] == {"0": {"lag": 70, "idle_s": 60.0}} and body["partitions"] == [0, 1]


def test_progress_or_catching_up_resets_the_stall_clock():
    h, clock = make(stall_s=60)
    h.observe({0: 10}, {0: 50})
    clock.t += 50
    h.observe({0: 11}, {0: 50})  # moved by one: progress
    clock.t += 50
    assert h.readiness([0], RUNNING).status == 200
    h.observe({0: 11}, {0: 11})  # caught up, then idle for long: not a stall
    clock.t += 600
    h.observe({0: 11}, {0: 11})
    assert h.readiness([0], RUNNING).status == 200
    h.observe({0: 11}, {0: 12})  # a new event; the idle time before it does not count
    clock.t += 59
    assert h.readiness([0], RUNNING).status == 200
    clock.t += 1
    assert h.readiness([0], RUNNING).status == 503


def test_revoked_partitions_are_forgotten_and_unknown_highwater_keeps_the_lag():
    h, clock = make(stall_s=10)
    h.observe({0: 0, 3: 0}, {0: 100, 3: 0})
    assert h.lags() == {0: 100, 3: 0}
    h.observe({3: 0}, {3: None})  # partition 0 revoked; 3's high-water not known this time
    assert h.lags() == {3: 0}
    clock.t += 100
    assert h.stalled() == {}
    assert h.readiness([3], RUNNING).status == 200
    h.observe({0: 0}, {0: None})  # re-assigned: a fresh watch, lag unknown counts as 0
    assert h.lags() == {0: 0}
