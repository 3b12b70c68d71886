"""The load generator of the latency runs: its own process, a C client (librdkafka through
confluent-kafka), so that feeding 1,500 events/s costs a few percent of a core instead of the
third of a core kafka-python's per-message Python path took from the worker under test.

It sends the first `--count` messages of a file written by `write_messages`, paced in 1 ms ticks
(every message due by now goes out, then the client is polled). Each record is stamped with its
send time by the client (CreateTime); the harness measures latency from that stamp, read back
from the input topic. Prints one JSON line: the rate it really achieved.

    python -m benchmarks.feeder --bootstrap H:P --topic T --messages F --count N --rate R
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import orjson


def write_messages(path: Path, msgs: list[tuple[bytes, bytes]]) -> None:
    path.write_bytes(b"\n".join(orjson.dumps([k.decode(), v.decode()]) for k, v in msgs))


def read_messages(path: Path, count: int) -> list[tuple[bytes, bytes]]:
    lines = path.read_bytes().split(b"\n")[:count]
    return [(k.encode(), v.encode()) for k, v in map(orjson.loads, lines)]


def main(argv: list[str] | None = None) -> None:
    from confluent_kafka import Producer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--messages", type=Path, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--rate", type=float, required=True)
    args = ap.parse_args(argv)
    msgs = read_messages(args.messages, args.count)
    p = Producer({"bootstrap.servers": args.bootstrap, "linger.ms": 1, "acks": 1})
    t0 = time.monotonic()
    i = 0
    while i < len(msgs):
        due = min(len(msgs), int((time.monotonic() - t0) * args.rate) + 1)
        for k, v in msgs[i:due]:
            p.produce(args.topic, value=v, key=k)
        i = due
        p.poll(0)
        time.sleep(0.001)
    sent_s = time.monotonic() - t0
    left = p.flush(60)
    print(orjson.dumps({"sent": len(msgs), "unflushed": left,
                        "achieved_events_per_s": len(msgs) / sent_s}).decode(), flush=True)


if __name__ == "__main__":
    main()
