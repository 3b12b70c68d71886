"""Delivery with two batches in flight: the order of sends, stores and acks, with the broker's
acknowledgements arriving in an order the test chooses."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from faust.types import TP

import stream_app.agents as agents
from stream_app.offsets import OffsetLedger
from stream_app.predictor import Predictor
from stream_app.state import decode

from .modelkit import make_registry
from .test_pipeline import DictTable, ev, make_pipeline

TOPIC = "events"


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    reg = tmp_path_factory.mktemp("registry")
    make_registry(reg)
    return Predictor(reg, device="cpu", top_k=5, cache_users=100)


class Meta:
    def __init__(self, partition: int, offset: int) -> None:
        self.partition, self.offset = partition, offset


class Batch(list):
    """aiokafka's BatchBuilder as the agent uses it: records appended in order."""

    def append(self, *, key, value, timestamp, headers):  # type: ignore[override]
        super().append((key, value))
        return True


class Broker:
    """The producer: every send (one record, or a batch of them) returns a future the test
    resolves; the log records what happened, in order."""

    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []
        self.pending: list[tuple[list[str], int, asyncio.Future]] = []  # (records, count, future)
        self.offsets: dict[int, int] = {}

    def _future(self, records: list[str]) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.pending.append((records, len(records), fut))
        fut.add_done_callback(lambda f: self.log.extend(("acked", r) for r in records))
        for r in records:
            self.log.append(("sent", r))
        return fut

    async def send(self, topic, key, value, partition, timestamp, headers):  # one record
        return self._future([label(topic, key, value)])

    def create_batch(self) -> Batch:
        return Batch()

    async def send_batch(self, batch, topic, *, partition):
        return self._future([label(topic, k, v) for k, v in batch])

    def resolve(self, prefix: str) -> int:
        """Acknowledge the sends holding a record whose label starts with `prefix`."""
        n = 0
        for records, count, fut in self.pending:
            if any(r.startswith(prefix) for r in records) and not fut.done():
                base = self.offsets.get(0, -1) + 1
                self.offsets[0] = base + count - 1
                fut.set_result(Meta(0, base))
                n += 1
        return n


def label(topic: str, key: bytes | None, value: bytes | None) -> str:
    if topic == "changelog":
        return f"changelog:{(key or b'').decode()}:{decode(value).n_events}"
    return f"{topic}:{orjson_id(value)}"


def orjson_id(value: bytes | None) -> str:
    import orjson

    try:
        return orjson.loads(value or b"{}").get("event_id", "?")
    except orjson.JSONDecodeError:
        return "row"


class Table(DictTable):
    changelog_topic = "changelog"

    def __init__(self, broker: Broker) -> None:
        super().__init__()
        self.broker = broker

    def put_local(self, partition, rows, changelog_offset=None):
        for k, v in rows.items():
            self.broker.log.append(("stored", f"{k.decode()}:{decode(v).n_events}"))
        super().put_local(partition, rows, changelog_offset)


class Stream:
    def __init__(self, log: list) -> None:
        self.log = log

    async def ack(self, event: Any) -> None:
        self.log.append(("ack", event.message.offset))


class Event:
    def __init__(self, offset: int) -> None:
        self.message = agents.BrokerRecord(TOPIC, 0, offset, b"u1", ev(offset), [], None)


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_the_next_batch_is_scored_while_the_previous_one_is_delivered_and_order_is_kept(predictor):
    async def scenario() -> tuple[Broker, Table, OffsetLedger]:
        broker = Broker()
        table = Table(broker)
        pending = agents.PendingRows(table)
        pipe = make_pipeline(predictor, pending)
        ledger = OffsetLedger()
        tp = TP(TOPIC, 0)
        app = type("App", (), {"consumer": type("C", (), {"_committed_offset": {tp: 0}})(),
                               "producer": broker})()
        delivery = agents.Delivery(app=app, pipeline=pipe, ledger=ledger,
                                   metrics=pipe.metrics, bootstrap="unused", producer=lambda: broker)
        stream = Stream(broker.log)
        await delivery.run(stream, [Event(0)])
        await delivery.run(stream, [Event(1)])  # returns although nothing is acknowledged yet
        await _settle()
        # the second batch saw the first one's row before it was stored: its user has 2 events
        assert ("sent", "changelog:u1:1") not in broker.log  # outputs of batch 1 not acked yet
        assert table.get(0, b"u1") is None and decode(pending.get(0, b"u1")).n_events == 2
        assert (0, "u1") in delivery.in_flight
        # the broker acknowledges batch 2's outputs first: nothing of batch 2 may move before 1
        assert broker.resolve("na:e1") + broker.resolve("churn:e1") == 2
        await _settle()
        assert not any(kind == "stored" or kind == "ack" for kind, _ in broker.log)
        broker.resolve("na:e0")
        broker.resolve("churn:e0")
        await _settle()
        broker.resolve("changelog:u1:1")
        await _settle()
        broker.resolve("changelog:u1:2")
        await delivery.drain()
        assert ledger.committable(tp) == 2 and len(delivery.in_flight) == 0
        return broker, table, ledger

    broker, table, _ = asyncio.run(scenario())
    order = [entry for entry in broker.log if entry[0] in ("sent", "stored", "ack")
             and (entry[0] != "sent" or entry[1].startswith("changelog"))]
    assert order == [("sent", "changelog:u1:1"), ("stored", "u1:1"), ("ack", 0),
                     ("sent", "changelog:u1:2"), ("stored", "u1:2"), ("ack", 1)]
    # each changelog record went out only after its own batch's predictions were acknowledged
    log = broker.log
    assert log.index(("acked", "na:e0")) < log.index(("sent", "changelog:u1:1"))
    assert log.index(("acked", "na:e1")) < log.index(("sent", "changelog:u1:2"))
    assert decode(table.get(0, b"u1")).n_events == 2


def test_a_failed_delivery_stops_the_worker_without_acknowledging(predictor, monkeypatch):
    stopped: list[BaseException] = []
    monkeypatch.setattr(agents, "_stop", stopped.append)

    async def scenario() -> Broker:
        broker = Broker()
        table = Table(broker)
        pending = agents.PendingRows(table)
        pipe = make_pipeline(predictor, pending)
        tp = TP(TOPIC, 0)
        app = type("App", (), {"consumer": type("C", (), {"_committed_offset": {tp: 0}})(),
                               "producer": broker})()
        delivery = agents.Delivery(app=app, pipeline=pipe, ledger=OffsetLedger(),
                                   metrics=pipe.metrics, bootstrap="unused", producer=lambda: broker)
        await delivery.run(Stream(broker.log), [Event(0)])
        await _settle()
        for records, _, fut in broker.pending:
            if any(r.startswith("na:") for r in records):
                fut.set_exception(RuntimeError("broker said no"))
        await delivery.drain()
        return broker

    broker = asyncio.run(scenario())
    assert len(stopped) == 1 and "broker said no" in repr(stopped[0])
    assert not any(kind in ("stored", "ack") for kind, _ in broker.log)
    assert not any(kind == "sent" and what.startswith("changelog") for kind, what in broker.log)


@pytest.mark.parametrize("replaced", [False, True])
def test_pending_rows_release_only_what_a_later_batch_did_not_replace(replaced):
    table = DictTable()
    pending = agents.PendingRows(table)
    pending.hold(1, {0: {b"a": b"v1"}})
    if replaced:
        pending.hold(2, {0: {b"a": b"v2"}})
    pending.release(1, {0: {b"a": b"v1"}})
    assert pending.get(0, b"a") == (b"v2" if replaced else None)
    assert ((0, "a") in pending) is replaced


class RefusingBroker(Broker):
    """Refuses a dead letter larger than the truncation size, as a broker refuses a record over
    its max.message.bytes; records what each dead-letter send carried."""

    def __init__(self) -> None:
        super().__init__()
        self.dead_letters: list[tuple[bytes, list[tuple[str, bytes]]]] = []

    async def send(self, topic, key, value, partition, timestamp, headers):
        if topic == "dlq":
            self.dead_letters.append((value, list(headers)))
            if len(value) > agents.MAX_DEAD_LETTER_BYTES:
                from aiokafka.errors import MessageSizeTooLargeError
                raise MessageSizeTooLargeError("the record is larger than the broker accepts")
        return await super().send(topic, key, value, partition, timestamp, headers)


def test_a_dead_letter_the_broker_refuses_whole_goes_truncated_and_the_event_is_acknowledged(
        predictor, monkeypatch):
    stopped: list[BaseException] = []
    monkeypatch.setattr(agents, "_stop", stopped.append)
    huge = b"not json " * 30_000  # 270 kB: dead-lettered as unparseable, refused whole

    async def scenario() -> tuple[RefusingBroker, OffsetLedger, TP]:
        broker = RefusingBroker()
        table = Table(broker)
        pipe = make_pipeline(predictor, agents.PendingRows(table))
        ledger, tp = OffsetLedger(), TP(TOPIC, 0)
        app = type("App", (), {"consumer": type("C", (), {"_committed_offset": {tp: 0}})(),
                               "producer": broker})()
        delivery = agents.Delivery(app=app, pipeline=pipe, ledger=ledger,
                                   metrics=pipe.metrics, bootstrap="unused", producer=lambda: broker)
        bad = Event(0)
        bad.message = agents.BrokerRecord(TOPIC, 0, 0, b"u1", huge, [("traceparent", b"00-ab-cd-01")], None)
        await delivery.run(Stream(broker.log), [bad, Event(1)])
        await _settle()
        for prefix in ("dlq:", "na:e1", "churn:e1", "changelog:u1:1"):
            assert broker.resolve(prefix) == 1, prefix
            await _settle()
        await delivery.drain()
        return broker, ledger, tp

    broker, ledger, tp = asyncio.run(scenario())
    assert stopped == []
    (first, first_headers), (copy, headers) = broker.dead_letters
    assert first == huge and ("traceparent", b"00-ab-cd-01") in first_headers
    assert copy == huge[:agents.MAX_DEAD_LETTER_BYTES]
    h = dict(headers)
    assert h["x-dlq-truncated-from-bytes"] == str(len(huge)).encode()
    assert h["x-dlq-source-offset"] == b"0" and h["x-dlq-reason"]
    assert "traceparent" not in h  # only our own headers survive the fallback
    assert ("ack", 0) in broker.log and ("ack", 1) in broker.log and ledger.committable(tp) == 2
