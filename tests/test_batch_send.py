"""Records to producer batches: grouped by (topic, partition), in order, split where aiokafka's
own BatchBuilder is full, offsets accounted per batch. (The real broker path runs in every
integration test: predictions and state rows all go this way.)"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.record.default_records import DefaultRecordBatch

from stream_app.batch_send import send_batched


@dataclass
class Rec:
    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None


def _run(records: list[Rec], max_batch_size: int) -> list[tuple[str, int, int, list]]:
    """send_batched through a real aiokafka producer (never started: `send_batch` is captured);
    returns (topic, partition, count, decoded records) per batch handed over."""

    async def go():
        producer = AIOKafkaProducer(bootstrap_servers="unused:9092", max_batch_size=max_batch_size)
        handed: list = []

        async def send_batch(batch, topic, *, partition):
            buf = batch._build()
            handed.append((topic, partition, list(DefaultRecordBatch(buf))))
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(None)
            return fut

        producer.send_batch = send_batch  # type: ignore[method-assign]
        sent = await send_batched(producer, records)
        return [(s.topic, s.partition, s.count, [(r.key, r.value, list(r.headers)) for r in h[2]])
                for s, h in zip(sent, handed, strict=True)]

    return asyncio.run(go())


def test_records_are_grouped_per_topic_and_partition_in_order_with_headers():
    recs = [Rec("na", 1, b"u1", b"a"), Rec("churn", 1, b"u1", b"b"), Rec("na", 0, b"u2", b"c"),
            Rec("na", 1, b"u3", b"d", [("h", b"1")]), Rec("na", 1, b"u1", None)]
    out = _run(recs, 16384)
    assert [(t, p, n) for t, p, n, _ in out] == [("na", 1, 3), ("churn", 1, 1), ("na", 0, 1)]
    assert out[0][3] == [(b"u1", b"a", []), (b"u3", b"d", [("h", b"1")]), (b"u1", None, [])]


def test_a_full_batch_continues_in_the_next_and_offsets_cover_every_record():
    recs = [Rec("na", 2, f"u{i}".encode(), bytes(300)) for i in range(10)]
    out = _run(recs, 1000)  # about three records per batch
    assert len(out) > 2 and sum(n for _, _, n, _ in out) == 10
    assert [k for *_, rs in out for k, _, _ in rs] == [f"u{i}".encode() for i in range(10)]
    assert all(n == len(rs) for _, _, n, rs in out)


def test_a_batch_holds_the_offsets_from_its_base_on():
    from types import SimpleNamespace

    from stream_app.batch_send import SentBatch

    assert SentBatch(None, "t", 0, 3).last_offset(SimpleNamespace(offset=10)) == 12
