"""The `stream-app` command: user-facing output lives here (and only here)."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from . import broker
from .config import Settings

log = logging.getLogger("stream_app")


def _settings(args: argparse.Namespace) -> Settings:
    s = Settings.from_env()
    return s.with_(bootstrap=getattr(args, "bootstrap", None),
                   namespace=getattr(args, "namespace", None),
                   partitions=getattr(args, "partitions", None))


# --- kafka -------------------------------------------------------------------------------------

def cmd_kafka_up(args: argparse.Namespace) -> int:
    info = broker.up(Path(args.data_dir), port=args.port)
    print(f"Kafka {broker.KAFKA_VERSION} broker pid {info.pid}, data {info.data_dir}")
    print(info.bootstrap)  # last line: the bootstrap address, for scripts
    return 0


def cmd_kafka_down(args: argparse.Namespace) -> int:
    stopped = broker.down(Path(args.data_dir))
    print("stopped" if stopped else "no broker was running")
    return 0


def cmd_kafka_status(args: argparse.Namespace) -> int:
    info, ok = broker.status(Path(args.data_dir))
    if info is None:
        print(f"no broker recorded in {args.data_dir}")
        return 1
    print(f"pid {info.pid} {info.bootstrap}: {'serving' if ok else 'NOT answering'}")
    return 0 if ok else 1


def cmd_kafka_exec(args: argparse.Namespace) -> int:
    """Start a broker on free ports, run a command with KAFKA_BOOTSTRAP_SERVERS set, always stop."""
    cmd = [c for c in args.cmd if c != "--"]
    if not cmd:
        print("usage: stream-app kafka exec -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="clickstream-kafka-"))
    info = broker.up(data_dir, port=args.port or broker.free_port())
    print(f"broker ready at {info.bootstrap} (data {data_dir})", flush=True)
    try:
        env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=info.bootstrap)
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 130
    finally:
        broker.down(data_dir)
        print("broker stopped", flush=True)


# --- service -----------------------------------------------------------------------------------

def cmd_topics(args: argparse.Namespace) -> int:
    from .admin import ensure_topics, topic_specs

    s = _settings(args)
    ensure_topics(s.bootstrap, topic_specs(s))
    for name, n in topic_specs(s).items():
        print(f"{name}\t{n} partitions")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from .admin import ensure_topics, topic_specs
    from .simulator import SimConfig, produce

    s = _settings(args)
    ensure_topics(s.bootstrap, topic_specs(s))
    cfg = SimConfig(users=args.users, events=args.events, seed=args.seed,
                    invalid_rate=args.invalid_rate)
    counts = produce(s.bootstrap, s.topics.events, cfg, rate=args.rate)
    print(f"sent {counts['valid']} valid and {counts['invalid']} invalid events to {s.topics.events}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from .admin import ensure_topics, topic_specs
    from .app import build_app, run_worker

    s = _settings(args).with_(
        data_dir=Path(args.data_dir) if args.data_dir else None, web_port=args.web_port,
        store=args.store)
    ensure_topics(s.bootstrap, topic_specs(s))
    app = build_app(s)
    log.info("worker %s consuming %s from %s; metrics on http://%s:%d/metrics",
             s.app_id, s.topics.events, s.bootstrap, s.web_host, s.web_port)
    run_worker(app, loglevel=s.log_level)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(rate=args.rate, users=args.users)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stream-app", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def service_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--bootstrap", help="Kafka bootstrap (default $KAFKA_BOOTSTRAP_SERVERS)")
        sp.add_argument("--namespace", help="prefix for every topic name")
        sp.add_argument("--partitions", type=int, help="partitions per topic")

    k = sub.add_parser("kafka", help="run a local Apache Kafka broker").add_subparsers(
        dest="kafka_command", required=True)
    up = k.add_parser("up", help="resolve, format and start a broker; prints its bootstrap")
    up.add_argument("--port", type=int)
    up.add_argument("--data-dir", default="var/kafka")
    up.set_defaults(func=cmd_kafka_up)
    down = k.add_parser("down", help="stop the broker recorded in --data-dir")
    down.add_argument("--data-dir", default="var/kafka")
    down.set_defaults(func=cmd_kafka_down)
    st = k.add_parser("status", help="is the recorded broker serving?")
    st.add_argument("--data-dir", default="var/kafka")
    st.set_defaults(func=cmd_kafka_status)
    ex = k.add_parser("exec", help="run a command against a throwaway broker")
    ex.add_argument("--port", type=int)
    ex.add_argument("--data-dir")
    ex.add_argument("cmd", nargs=argparse.REMAINDER)
    ex.set_defaults(func=cmd_kafka_exec)

    tp = sub.add_parser("topics", help="create the service's topics (idempotent)")
    service_args(tp)
    tp.set_defaults(func=cmd_topics)

    sm = sub.add_parser("simulate", help="produce simulated storefront events")
    service_args(sm)
    sm.add_argument("--users", type=int, default=200)
    sm.add_argument("--events", type=int, default=5000)
    sm.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")
    sm.add_argument("--seed", type=int, default=7)
    sm.add_argument("--invalid-rate", type=float, default=0.0)
    sm.set_defaults(func=cmd_simulate)

    wk = sub.add_parser("worker", help="run the stream worker")
    service_args(wk)
    wk.add_argument("--data-dir", help="table state (RocksDB) directory")
    wk.add_argument("--web-port", type=int, help="HTTP port for /metrics (default 6066)")
    wk.add_argument("--store", help="rocksdb:// (default) or memory://")
    wk.set_defaults(func=cmd_worker)

    dm = sub.add_parser("demo", help="broker + worker + simulator, predictions printed live")
    dm.add_argument("--rate", type=float, default=20.0, help="simulated events per second")
    dm.add_argument("--users", type=int, default=50)
    dm.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "aiokafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except broker.BrokerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
