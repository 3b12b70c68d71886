"""EventPipeline and IdleSweep against a dict-backed table: partitions, replays, errors, expiry."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace

import orjson
import pytest

from models.features import WindowLimits
from stream_app.agents import EventPipeline, IdleSweep, InfraError
from stream_app.instruments import Metrics
from stream_app.predictor import Predictor
from stream_app.state import FORMAT, NewerStateFormat, decode, encode, last_seen_of

from .modelkit import make_registry

NOW = 1_790_000_000.0  # the pipeline's wall clock in these tests


class DictTable:
    """The StateTable interface over plain dicts: {partition: {key: row}}."""

    def __init__(self, active: set[int] | None = None) -> None:
        self.parts: dict[int, dict[bytes, bytes]] = {}
        self.changelog: list[tuple[int, bytes, bytes | None]] = []
        self.active = active if active is not None else set(range(8))

    def get(self, partition, key):
        return self.parts.get(partition, {}).get(key)

    async def send(self, partition, key, value):
        self.changelog.append((partition, key, value))

    def put_local(self, partition, rows, changelog_offset=None):
        for k, v in rows.items():
            self.parts.setdefault(partition, {})[k] = v

    async def delete(self, partition, key):
        await self.send(partition, key, None)
        self.parts.get(partition, {}).pop(key, None)

    def scan(self, partition):
        return iter(list(self.parts.get(partition, {}).items()))

    def other_partitions_with(self, partition, key):
        return [p for p, rows in self.parts.items() if p != partition and key in rows]

    def active_partitions(self, app):
        return set(self.active)


@dataclass
class Msg:
    key: bytes | None
    value: bytes | None
    partition: int
    offset: int
    topic: str = "events"
    headers: list | None = None
    timestamp: float | None = None


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    reg = tmp_path_factory.mktemp("registry")
    make_registry(reg)
    return Predictor(reg, device="cpu", top_k=5, cache_users=100)


def make_pipeline(predictor, table, **kw):
    return EventPipeline(metrics=Metrics(), predictor=predictor, table=table,
                         limits=WindowLimits(events=20, seconds=3600.0),
                         dead_letters="dlq", next_action="na", churn="churn", clock=lambda: NOW, **kw)


def ev(i, user="u1", ts=NOW - 1000, action="view", item="i1") -> bytes:
    return orjson.dumps({"event_id": f"e{i}", "user_id": user, "ts": ts + i, "action": action,
                         "item_id": item})


def msgs_for(events, partition=0, start=0):
    return [Msg(orjson.loads(v)["user_id"].encode(), v, partition, start + i) for i, v in enumerate(events)]


def by_topic(out):
    d: dict[str, list] = {}
    for m in out.messages:
        d.setdefault(m.topic, []).append(m)
    return d


def commit(table, out):
    """What Delivery does after the outputs are on the broker."""
    for (p, u), row in out.rows.items():
        table.put_local(p, {u.encode(): row})


def test_any_partition_is_accepted_and_the_row_lives_there(predictor):
    table = DictTable()
    pipe = make_pipeline(predictor, table)
    out = pipe.process(msgs_for([ev(0), ev(1)], partition=5))
    t = by_topic(out)
    assert "dlq" not in t and len(t["na"]) == len(t["churn"]) == 2
    assert all(m.partition == 5 for m in out.messages)  # outputs follow the input's partition
    assert list(out.rows) == [(5, "u1")]
    commit(table, out)
    assert decode(table.get(5, b"u1")).offset == 1


def test_a_user_on_two_partitions_keeps_two_states_and_is_counted(predictor):
    table = DictTable()
    pipe = make_pipeline(predictor, table)
    commit(table, pipe.process(msgs_for([ev(0), ev(1)], partition=1)))
    out = pipe.process(msgs_for([ev(2)], partition=3))
    commit(table, out)
    assert decode(table.get(1, b"u1")).n_events == 2 and decode(table.get(3, b"u1")).n_events == 1
    assert pipe.metrics.registry.get_sample_value("clickstream_split_users_total") == 1


def test_replays_are_recognised_by_offset_beyond_the_window(predictor):
    """More than a window's worth of a user's events redelivered after a crash: none applied twice."""
    table = DictTable()
    pipe = make_pipeline(predictor, table)
    events = [ev(i, item=f"i{i % 7}") for i in range(30)]  # window is 20
    commit(table, pipe.process(msgs_for(events)))
    before = decode(table.get(0, b"u1"))
    out = pipe.process(msgs_for(events))  # the same offsets again
    replayed = [orjson.loads(m.value)["replayed"] for m in out.messages if m.topic == "na"]
    assert replayed == [True] * 30
    assert decode(out.rows[(0, "u1")]).n_events == before.n_events == 30


def test_far_future_event_is_dead_lettered_and_cannot_expire_anyone(predictor):
    table = DictTable()
    pipe = make_pipeline(predictor, table, max_future_s=600)
    out = pipe.process([*msgs_for([ev(i, user=f"u{i}") for i in range(20)]),
                        Msg(b"evil", ev(99, user="evil", ts=4_000_000_000), 0, 20)])
    commit(table, out)
    (m,) = by_topic(out)["dlq"]
    assert m.key == b"evil" and dict(m.headers)["x-dlq-reason"] == b"future_timestamp"
    sweep = IdleSweep(app=None, table=table, delivery=_Delivery(pipe), window_s=3600.0,
                      max_future_s=600, metrics=pipe.metrics, forget=lambda row: None)
    assert asyncio.run(sweep.run()) == 0
    assert len(table.parts[0]) == 20


class _Delivery:
    def __init__(self, pipeline, in_flight=()):
        self.pipeline = pipeline
        self.in_flight = set(in_flight)


def test_sweep_uses_each_partitions_own_clock_and_only_active_partitions(predictor):
    table = DictTable(active={0, 1})
    pipe = make_pipeline(predictor, table)
    # partition 0 runs two hours ahead of partition 1 (a lagging partition)
    commit(table, pipe.process(msgs_for([ev(0, user="old0", ts=NOW - 7300),
                                         ev(1, user="new0", ts=NOW - 100)], partition=0)))
    commit(table, pipe.process(msgs_for([ev(0, user="old1", ts=NOW - 7300)], partition=1)))
    table.parts[2] = dict(table.parts[1])  # a standby copy of a partition we do not own
    sweep = IdleSweep(app=None, table=table, delivery=_Delivery(pipe), window_s=3600.0,
                      max_future_s=600, metrics=pipe.metrics, forget=lambda row: None)
    assert asyncio.run(sweep.run()) == 1  # only old0: partition 1's own clock says old1 is fresh
    assert set(table.parts[0]) == {b"new0"} and set(table.parts[1]) == {b"old1"}
    assert set(table.parts[2]) == {b"old1"}
    assert table.changelog[-1] == (0, b"old0", None)  # tombstone in the row's own partition
    r = pipe.metrics.registry
    assert r.get_sample_value("clickstream_expired_users_total") == 1
    assert r.get_sample_value("clickstream_active_users") == 2


def test_sweep_skips_rows_being_written(predictor):
    table = DictTable(active={0})
    pipe = make_pipeline(predictor, table)
    commit(table, pipe.process(msgs_for([ev(0, user="a", ts=NOW - 9000), ev(1, user="b", ts=NOW - 10)])))
    sweep = IdleSweep(app=None, table=table, delivery=_Delivery(pipe, in_flight={(0, "a")}),
                      window_s=3600.0, max_future_s=600, metrics=pipe.metrics, forget=lambda row: None)
    assert asyncio.run(sweep.run()) == 0 and b"a" in table.parts[0]


def test_a_row_from_a_newer_state_format_is_never_overwritten(predictor):
    table = DictTable()
    pipe = make_pipeline(predictor, table)
    commit(table, pipe.process(msgs_for([ev(0)])))
    row = table.get(0, b"u1")
    table.parts[0][b"u1"] = bytes([FORMAT + 1]) + row[1:]
    with pytest.raises(NewerStateFormat):
        pipe.process(msgs_for([ev(1)], start=1))


def test_data_errors_retry_event_by_event_without_duplicate_outputs(predictor, monkeypatch):
    import stream_app.agents as agents

    table = DictTable()
    pipe = make_pipeline(predictor, table)
    real = agents.score_batch

    def flaky(p, events, states, limits, **kw):
        if any(e.item_id == "poison" for e in events):
            raise ValueError("cannot score this one")
        return real(p, events, states, limits, **kw)

    monkeypatch.setattr(agents, "score_batch", flaky)
    out = pipe.process(msgs_for([ev(0), ev(1, item="poison"), ev(2)]))
    t = by_topic(out)
    assert [orjson.loads(m.value)["event_id"] for m in t["na"]] == ["e0", "e2"]
    assert len(t["churn"]) == 2
    (d,) = t["dlq"]
    assert dict(d.headers)["x-dlq-reason"] == b"processing_error"
    assert decode(out.rows[(0, "u1")]).n_events == 2


def test_infrastructure_errors_are_never_dead_lettered(predictor, monkeypatch):
    import stream_app.agents as agents

    pipe = make_pipeline(predictor, DictTable())

    def broken(*a, **kw):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(agents, "score_batch", broken)
    with pytest.raises(RuntimeError):
        pipe.process(msgs_for([ev(0)]))


def test_a_run_of_data_like_failures_trips_the_breaker(predictor, monkeypatch):
    import stream_app.agents as agents

    pipe = make_pipeline(predictor, DictTable(), breaker_failures=3)

    def always(*a, **kw):
        raise KeyError("a bug, not the data")

    monkeypatch.setattr(agents, "score_batch", always)
    out = pipe.process(msgs_for([ev(0), ev(1)]))
    assert len(out.messages) == 2  # two dead letters: could still be the data
    with pytest.raises(InfraError):
        pipe.process(msgs_for([ev(2), ev(3)], start=2))


def test_format_1_rows_are_read_and_rewritten_as_the_current_format():
    from stream_app.state import _HEAD, _HEAD_V1, UserState

    st = UserState(n_events=3, first_seen=1.0, last_seen=2.0, offset=7)
    row = encode(st)
    assert row[0] == FORMAT and decode(row).offset == 7
    old = _HEAD_V1.pack(1, *_HEAD.unpack_from(row, 0)[1:-1]) + row[_HEAD.size:]
    back = decode(old)
    assert back.offset == -1 and back.n_events == 3 and last_seen_of(old) == 2.0
    assert replace(back, offset=7) == decode(row)


def test_a_hole_is_filled_from_the_broker_before_the_event_that_revealed_it(predictor, monkeypatch):
    """Faust's recovery race drops events between fetch and agent: the agent reads them itself."""
    from faust.types import TP

    import stream_app.agents as agents
    from stream_app.offsets import OffsetLedger

    tp = TP("events", 0)
    table = DictTable()
    pending = agents.PendingRows(table)
    pipe = make_pipeline(predictor, pending)
    ledger = OffsetLedger()
    app = type("App", (), {"consumer": type("C", (), {"_committed_offset": {tp: 10}})()})()
    delivery = agents.Delivery(app=app, pipeline=pipe, ledger=ledger,
                               metrics=pipe.metrics, bootstrap="unused")

    async def fake_read(bootstrap, tp_, start, end, client_kwargs=None):
        assert (start, end) == (10, 13)
        return [agents.BrokerRecord("events", 0, o, b"u1", ev(o), [], None) for o in (10, 12)]  # 11: a marker

    monkeypatch.setattr(agents, "read_records", fake_read)

    class Ev:
        def __init__(self, o):
            self.message = agents.BrokerRecord("events", 0, o, b"u1", ev(o), [], None)

    admitted = asyncio.run(delivery._admit(None, [Ev(13), Ev(14)]))
    assert [m.offset for m, _, _ in admitted] == [10, 12, 13, 14]
    assert [e is None for _, _, e in admitted] == [True, True, False, False]
    for m, gen, _ in admitted:
        ledger.done(m.tp, m.offset, gen)
    assert ledger.committable(tp) == 15
    assert pipe.metrics.registry.get_sample_value("clickstream_offset_holes_total") == 2
