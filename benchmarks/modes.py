"""The processes `benchmarks.throughput` compares, each run alone in its own process:

- raw: a plain aiokafka loop: fetch a batch, parse each event, produce one message per event;
- faust_consume: a Faust agent that only iterates its stream (what Faust costs before any output;
  it writes one progress message per `PROGRESS_EVERY` events so the harness can count);
- faust_passthrough: a Faust agent that forwards each event (Faust's own per-event floor);
- naive: the obvious design: per event, read the user's window from the table, append, write it
  back, run the whole window through the GRU, await two sends;
- pipeline: the real worker (`stream-app worker`), started by the harness itself.

    python -m benchmarks.modes raw --bootstrap H:P --input T --output T --group G
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson

from stream_app.records import InvalidEvent, parse_event


async def run_raw(args: argparse.Namespace) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    consumer = AIOKafkaConsumer(args.input, bootstrap_servers=args.bootstrap, group_id=args.group,
                                auto_offset_reset="earliest", enable_auto_commit=True,
                                max_poll_records=2000)
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, linger_ms=5, acks=1,
                                max_batch_size=256 * 1024)
    await consumer.start()
    await producer.start()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=2000)
            futs = []
            for msgs in batches.values():
                for m in msgs:
                    try:
                        e = parse_event(m.value, m.key)
                    except InvalidEvent:
                        continue
                    futs.append(await producer.send(args.output, key=m.key, value=orjson.dumps(
                        {"event_id": e.event_id, "user_id": e.user_id})))
            if futs:
                await asyncio.gather(*futs)
    finally:
        await producer.stop()
        await consumer.stop()


def faust_app(args: argparse.Namespace) -> Any:
    import faust

    return faust.App(args.group, broker=f"kafka://{args.bootstrap}", store="memory://",
                     web_port=args.web_port, web_host="127.0.0.1", web_bind="127.0.0.1",
                     autodiscover=False, consumer_auto_offset_reset="earliest",
                     topic_partitions=args.partitions, datadir=args.data_dir)


def raw_topic(app: Any, name: str) -> Any:
    return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                     value_serializer="raw")


def run_faust_passthrough(args: argparse.Namespace) -> None:
    import faust

    app = faust_app(args)
    out = raw_topic(app, args.output)

    async def forward(stream: Any) -> None:
        async for ev in stream.events():
            await out.send(key=ev.key, value=ev.value)

    app.agent(raw_topic(app, args.input), name="bench.passthrough")(forward)
    faust.Worker(app, loglevel="warning", override_logging=False).execute_from_commandline()


PROGRESS_EVERY = 100


def run_faust_consume(args: argparse.Namespace) -> None:
    import faust

    app = faust_app(args)
    out = raw_topic(app, args.output)

    async def consume(stream: Any) -> None:
        n = 0
        async for _ in stream.events():
            n += 1
            if n % PROGRESS_EVERY == 0:
                await out.send(key=None, value=b"%d" % n)

    app.agent(raw_topic(app, args.input), name="bench.consume")(consume)
    faust.Worker(app, loglevel="warning", override_logging=False).execute_from_commandline()


def run_naive(args: argparse.Namespace) -> None:
    import faust
    import torch

    from models.features import WindowLimits
    from stream_app.predictor import Predictor
    from stream_app.state import observe

    torch.set_num_threads(1)  # as the pipeline worker does by default (CLICKSTREAM_TORCH_THREADS)
    predictor = Predictor(args.model_dir, device="cpu")
    model = predictor.model
    limits = WindowLimits(model.cfg.window, 1e12)
    app = faust_app(args)
    src = raw_topic(app, args.input)
    out_a, out_c = raw_topic(app, args.output), raw_topic(app, args.output + ".churn")
    table = app.Table("naive-windows", default=None, partitions=args.partitions)

    async def score(stream: Any) -> None:
        async for ev in stream.events():
            try:
                e = parse_event(ev.value, ev.key)
            except InvalidEvent:
                continue
            # the obvious design: keep the window as JSON, re-run all of it every event
            window = table.get(e.user_id) or []
            window.append({k: v for k, v in orjson.loads(e.to_json()).items()})
            window = window[-model.cfg.window:]
            table[e.user_id] = window
            st = None
            for w in window:
                st, _ = observe(st, parse_event(orjson.dumps(w)), limits)
            with torch.no_grad():
                x = predictor._sequence_inputs([st.window], len(st.window), limits)
                o, _, _ = model(x)
                probs = torch.softmax(o.action_logits[0, -1], -1).tolist()
                churn = float(torch.sigmoid(o.churn_logit[0, -1]))
            await out_a.send(key=ev.key, value=orjson.dumps({"event_id": e.event_id, "p": probs}))
            await out_c.send(key=ev.key, value=orjson.dumps({"event_id": e.event_id, "churn": churn}))

    app.agent(src, name="bench.naive")(score)
    faust.Worker(app, loglevel="warning", override_logging=False).execute_from_commandline()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("mode", choices=["raw", "faust_consume", "faust_passthrough", "naive"])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--web-port", type=int, default=0)
    ap.add_argument("--data-dir", default="/tmp/bench-faust")
    ap.add_argument("--model-dir")
    args = ap.parse_args(argv)
    sys.argv = [sys.argv[0], "worker"]  # Faust's Worker parses argv
    if args.mode == "raw":
        asyncio.run(run_raw(args))
    elif args.mode == "faust_consume":
        run_faust_consume(args)
    elif args.mode == "faust_passthrough":
        run_faust_passthrough(args)
    else:
        run_naive(args)


if __name__ == "__main__":
    main()
