"""The `stream-app` command: user-facing output lives here (and only here)."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from clickstream_tools import broker

from .config import Settings
from .kafka_clients import BrokerUnavailable

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
    ensure_topics(s.bootstrap, topic_specs(s), s.kafka_client_kwargs())
    for name, n in topic_specs(s).items():
        print(f"{name}\t{n} partitions")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from clickstream_tools.simulator import SimConfig, produce

    from .admin import ensure_topics, topic_specs

    s = _settings(args)
    ensure_topics(s.bootstrap, topic_specs(s), s.kafka_client_kwargs())
    cfg = SimConfig(users=args.users, events=args.events, seed=args.seed,
                    invalid_rate=args.invalid_rate,
                    drift_every_s=args.drift_every if args.drift else 0.0,
                    drift_strength=args.drift_strength)
    counts = produce(s.bootstrap, s.topics.events, cfg, rate=args.rate,
                     client_kwargs=s.kafka_client_kwargs())
    print(f"sent {counts['valid']} valid and {counts['invalid']} invalid events to {s.topics.events}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from clickstream_tools.replay import ReplayError, read_log, replay

    from .admin import ensure_topics, topic_specs

    s = _settings(args)
    speed = None if args.speed == "max" else float(args.speed)
    log_file = read_log(Path(args.path), args.format)
    if args.limit:
        log_file.events = log_file.events[:args.limit]
    if log_file.rejected:
        print(f"{log_file.rejected} invalid lines skipped, e.g. " + "; ".join(log_file.examples),
              file=sys.stderr)
    if not log_file.events:
        print(f"error: no valid events in {args.path}", file=sys.stderr)
        return 1
    ensure_topics(s.bootstrap, topic_specs(s), s.kafka_client_kwargs())
    pace = "as fast as possible" if speed is None else f"at {speed:g}x the log's pace"
    with Progress(TextColumn("[bold]replay"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("events"), TimeRemainingColumn(), transient=False) as bar:
        task = bar.add_task("replay", total=len(log_file.events))
        bar.console.print(f"{len(log_file.events)} events from {args.path} -> {s.topics.events}, {pace}")
        try:
            report = replay(s, log_file, speed, progress=lambda n, _t: bar.update(task, completed=n))
        except ReplayError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    print(f"sent {report.sent} events ({report.log_seconds:.0f} s of log time) in "
          f"{report.wall_seconds:.1f} s; {report.rejected} invalid lines skipped")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from models.checkpoint import CheckpointError, current_version

    s = _settings(args).with_(
        data_dir=Path(args.data_dir) if args.data_dir else None, web_port=args.web_port,
        store=args.store, model_dir=Path(args.model_dir) if args.model_dir else None,
        device=args.device)
    if current_version(s.model_dir) is None:  # a new machine: the announced version, if any
        from .model_bus import fetch_latest

        try:
            got = fetch_latest(s, s.model_dir)
        except CheckpointError as e:
            print(f"error: the announced model cannot be used: {e}", file=sys.stderr)
            return 2
        if got:
            log.info("no local model; fetched the announced version %s into %s", got, s.model_dir)
    if current_version(s.model_dir) is None:
        print(f"error: no model in {s.model_dir} and none announced. Train one first, e.g.\n"
              f"  stream-app train --source simulate --out {s.model_dir}", file=sys.stderr)
        return 2
    from .admin import ensure_topics, topic_specs
    from .app import build_app, run_worker
    from .instruments import Metrics
    from .model_bus import open_predictor

    if s.torch_threads:
        import torch

        torch.set_num_threads(s.torch_threads)
    metrics = Metrics()
    try:  # CURRENT, or a fallback when CURRENT cannot be loaded (model_bus.open_predictor)
        predictor = open_predictor(s, metrics)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ensure_topics(s.bootstrap, topic_specs(s), s.kafka_client_kwargs())
    app = build_app(s, predictor, metrics)
    log.info("worker %s: %s -> predictions with model %s on %s; metrics http://%s:%d/metrics",
             s.app_id, s.topics.events, predictor.version, predictor.device, s.web_host, s.web_port)
    run_worker(app, loglevel=s.log_level)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from clickstream_tools.sources import SHARED, jsonl_events, simulated_events
    from models.checkpoint import save_version
    from models.datasets import read_diginetica, read_taobao
    from models.gru import GRUConfig
    from models.recipes import train_on_events, train_on_sessions
    from models.train import TrainConfig, pick_device

    def progress(p: dict) -> None:
        if p.get("done"):
            print(f"\repoch {p['epoch']}: train loss {p['train_loss']:.4f}, valid "
                  f"{p.get('valid', {}).get('total', float('nan')):.4f} ({p['elapsed_s']:.0f}s)"
                  + " " * 20, file=sys.stderr, flush=True)
        else:
            bar = "#" * int(30 * p["batch"] / p["batches"])
            print(f"\repoch {p['epoch']} [{bar:<30}] {p['batch']}/{p['batches']} "
                  f"loss {p['loss']:.4f}", end="", file=sys.stderr, flush=True)

    quick = args.quick
    cfg = GRUConfig(n_items=0, n_categories=0, emb_dim=32 if quick else args.hidden,
                    hidden=32 if quick else args.hidden, churn_horizon_s=args.horizon,
                    repeat_flag=True, gap_buckets=True, window_attention=args.window_readout,
                    last_item_readout=args.window_readout, gate_window_stats=args.window_readout,
                    transition_k=args.transitions, transition_decay=args.transition_decay)
    tcfg = TrainConfig(epochs=3 if quick else args.epochs, max_seconds=args.max_seconds,
                       batch_tokens=args.batch_tokens or (1024 if quick else 4096),
                       sampled_negatives=args.negatives,
                       negatives_from="mixed" if args.negatives else "popularity",
                       lr_decay=args.lr_decay, weight_decay=args.weight_decay,
                       transition_recency=args.transition_recency,
                       recent_fraction=args.recent_fraction, recent_lr=args.recent_lr,
                       valid_passes=args.valid_passes, bf16=args.bf16)
    data_desc: dict = {"source": args.source}
    if args.source == "diginetica":
        train, _ = read_diginetica(SHARED / "diginetica")
        train = train[:20000] if quick else train
        model, items, cats, report = train_on_sessions(train, cfg, tcfg, device=args.device,
                                                       progress=progress)
        data_desc |= {"sessions": len(train), "heads_trained": ["next_item"],
                      "note": "no actions or timestamps in this data: action and churn heads untrained"}
        metrics = {"best_valid_loss": report["best_valid_loss"]}
    else:
        if args.source == "simulate":
            events, _ = simulated_events(args.users, 20_000 if quick else args.events)
        elif args.source == "taobao":
            events = read_taobao(SHARED / "taobao_slice" / "UserBehavior.csv")
            events = events[:30_000] if quick else events
        else:
            events, bad = jsonl_events(Path(args.source))
            data_desc["rejected_lines"] = bad
        # the window the workers keep (CLICKSTREAM_WINDOW_*): training applies it as they do
        limits = Settings.from_env().window_limits()
        if limits.seconds < args.horizon:
            print(f"warning: CLICKSTREAM_WINDOW_SECONDS={limits.seconds:g} is shorter than the churn "
                  f"horizon ({args.horizon:g} s): workers forget a user before the horizon passes",
                  file=sys.stderr)
        trained = train_on_events(events, cfg, tcfg, device=args.device, progress=progress,
                                  limits=limits)
        model, items, cats, report = trained.model, trained.items, trained.categories, trained.report
        data_desc |= {"events": len(events), "split": trained.split,
                      "window_limits": {"events": limits.events, "seconds": limits.seconds},
                      "heads_trained": ["next_item", "next_action", "churn"]}
        metrics = report["test"]
    version = save_version(Path(args.out), model.cpu(), items, cats, data_desc,
                           {"test": metrics, "training": {k: report[k] for k in  # + the recipe
                            ("epochs_run", "best_valid_loss", "train_seconds", "device",
                             "train_config", "recent_pass", "validation_passes") if k in report}})
    print(f"device {pick_device(args.device)}; test metrics: {metrics}")
    print(f"saved version {version} in {args.out}")
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    """The retrain worker: one cycle (--once) or one every CLICKSTREAM_RETRAIN_INTERVAL_S."""
    import signal
    import threading

    from models.gru import GRUConfig
    from models.train import TrainConfig

    from .model_bus import announce
    from .retrain import RetrainJob, run_cycle, serve_forever

    s = _settings(args).with_(model_dir=Path(args.model_dir) if args.model_dir else None,
                              retrain_web_port=args.web_port, device=args.device)

    def tell_fleet(version: str, reason: str) -> None:  # workers elsewhere follow the model bus
        announce(s, s.model_dir, version, reason=reason, by="retrain")

    job = RetrainJob(
        train=TrainConfig(epochs=args.epochs, max_seconds=args.max_seconds, patience=1,
                          batch_tokens=args.batch_tokens),
        first_model=GRUConfig(n_items=0, n_categories=0, emb_dim=args.hidden, hidden=args.hidden,
                              churn_horizon_s=args.horizon, repeat_flag=True, gap_buckets=True),
        device=s.device)
    if args.once:
        rec = run_cycle(s, job, on_promoted=tell_fleet)
        print(f"{rec['outcome']}: {rec.get('reason', '')}")
        for model in ("champion", "challenger"):
            m = (rec.get("metrics") or {}).get(model)
            if m:
                print(f"  {model}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()
                                                 if not k.startswith("n_")))
        if rec.get("version"):
            print(f"promoted version {rec['version']} in {s.model_dir}")
        if rec.get("announce_error"):
            print(f"error: not announced to the fleet: {rec['announce_error']}; retry with "
                  f"`stream-app models announce`", file=sys.stderr)
            return 1
        return 1 if rec["outcome"] == "failed" else 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        serve_forever(s, job, stop, on_promoted=tell_fleet)
    except KeyboardInterrupt:
        stop.set()
    return 0


def _registry_dir(args: argparse.Namespace) -> Path:
    return Path(args.model_dir) if args.model_dir else Settings.from_env().model_dir


def _actor(args: argparse.Namespace) -> str:
    import getpass

    return f"operator:{args.user or getpass.getuser()}"


def cmd_models(args: argparse.Namespace) -> int:
    """Operators' view of the registry: list, show, promote, rollback (each change recorded)."""
    import datetime
    import json

    from models.checkpoint import (
        CheckpointError,
        current_version,
        promote,
        read_history,
        rollback,
        show_version,
        version_summaries,
    )

    reg = _registry_dir(args)

    def when(t: float | None) -> str:
        return datetime.datetime.fromtimestamp(t or 0, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")

    try:
        if args.models_command == "list":
            rows = version_summaries(reg)
            if not rows:
                print(f"no versions in {reg}")
            for r in rows:
                nxt = r["metrics"].get("test", {}).get("next_item", {})
                hit = f"recall@20 {nxt['recall@20']:.3f}" if "recall@20" in nxt else ""
                print(f"{'*' if r['current'] else ' '} {r['version']}  created {when(r['created_unix'])}"
                      f"  items {r['items']}  promoted {len(r['promoted_unix'])}x  {hit}")
            for e in read_history(reg)[-args.history:]:
                print(f"  {when(e['time'])} {e['kind']:<8} {e['version']} (was {e['previous']}) "
                      f"by {e['actor']}: {e['reason']}")
        elif args.models_command == "show":
            print(json.dumps(show_version(reg, args.version), indent=2, default=str))
        elif args.models_command == "announce":
            return _announce(args, reg, args.version or current_version(reg), "re-announced")
        elif args.models_command == "promote":
            e = promote(reg, args.version, _actor(args), args.reason)
            print(f"promoted {e['version']} (was {e['previous']}) in {reg}")
            return _announce(args, reg, e["version"], args.reason)
        else:
            e = rollback(reg, _actor(args), args.reason)
            print(f"rolled back to {e['version']} (was {e['previous']}) in {reg}")
            return _announce(args, reg, e["version"], f"rollback: {args.reason}")
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _announce(args: argparse.Namespace, reg: Path, version: str | None, reason: str) -> int:
    """Tell the fleet (model bus) which version to serve, unless --local."""
    if getattr(args, "local", False):
        return 0
    if version is None:
        print(f"error: no current version in {reg}", file=sys.stderr)
        return 2
    from .model_bus import announce

    try:
        announce(_settings(args), reg, version, reason=reason, by=_actor(args))
    except Exception as e:  # the registry change stands; say how to finish the job
        print(f"error: {version} is current in {reg} but was not announced to the fleet "
              f"({type(e).__name__}: {e}); retry with `stream-app models announce`", file=sys.stderr)
        return 1
    print(f"announced {version} to the fleet ({_settings(args).topics.model_updates})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from clickstream_tools.demo import run_demo

    return run_demo(rate=args.rate, users=args.users, model_dir=Path(args.model_dir),
                    replay=Path(args.replay) if args.replay else None, speed=args.speed)


def _speed(v: str) -> str:
    if v != "max" and not (v.replace(".", "", 1).isdigit() and float(v) > 0):
        raise argparse.ArgumentTypeError("a positive number or 'max'")
    return v


def _count(minimum: int) -> Callable[[str], int]:
    def parse(v: str) -> int:
        try:
            n = int(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{v!r}: a whole number") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"{n}: at least {minimum}")
        return n
    return parse


def _real(ok: Callable[[float], bool], wanted: str) -> Callable[[str], float]:
    """An argparse type: a float for which `ok` holds (nan fails every comparison), else
    argparse's usage error saying what is `wanted`."""
    def parse(v: str) -> float:
        try:
            x = float(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{v!r}: a number") from None
        if not ok(x):
            raise argparse.ArgumentTypeError(f"{x:g}: {wanted}")
        return x
    return parse


_decay = _real(lambda x: 0 < x <= 1, "a factor above 0 and at most 1")
_non_negative = _real(lambda x: x >= 0, "at least 0")
_unit = _real(lambda x: 0 <= x <= 1, "between 0 and 1")
_positive = _real(lambda x: x > 0, "above 0")


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
    sm.add_argument("--drift", action="store_true",
                    help="behaviour drifts: popular items/categories rotate, funnel rates change")
    sm.add_argument("--drift-every", type=float, default=3 * 3600.0,
                    help="with --drift: seconds of event time between changes (default 3 h)")
    sm.add_argument("--drift-strength", type=float, default=0.5,
                    help="with --drift: share of the catalogue whose popularity moves per change")
    sm.set_defaults(func=cmd_simulate)

    wk = sub.add_parser("worker", help="run the stream worker")
    service_args(wk)
    wk.add_argument("--data-dir", help="table state (RocksDB) directory")
    wk.add_argument("--web-port", type=int, help="HTTP port for /metrics (default 6066)")
    wk.add_argument("--store", help="rocksdb:// (the default and only store: state lives per partition)")
    wk.add_argument("--model-dir", help="model registry (default $CLICKSTREAM_MODEL_DIR or var/models)")
    wk.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto")
    wk.set_defaults(func=cmd_worker)

    rp = sub.add_parser("replay", help="replay a real log (Taobao CSV or schema-v1 JSON lines) into Kafka")
    service_args(rp)
    rp.add_argument("path", help="Taobao UserBehavior CSV (.csv) or JSON lines of schema-v1 events")
    rp.add_argument("--speed", default="1", type=_speed,
                    help="a multiple of the log's own pace (1 = original, 10 = ten times faster), "
                         "or 'max' (as fast as possible); default 1")
    rp.add_argument("--format", default="auto", choices=["auto", "taobao", "jsonl"],
                    help="default: taobao for .csv, else jsonl")
    rp.add_argument("--limit", type=int, help="only the first N events (in time order)")
    rp.set_defaults(func=cmd_replay)

    tr = sub.add_parser("train", help="train a model and add it to a model registry")
    tr.add_argument("--source", default="simulate",
                    help="simulate | taobao | diginetica | PATH (JSON lines of schema-v1 events)")
    tr.add_argument("--out", required=True, help="model registry directory")
    tr.add_argument("--quick", action="store_true", help="small and fast (tests, demos)")
    tr.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    tr.add_argument("--epochs", type=int, default=10)
    tr.add_argument("--max-seconds", type=float, help="training wall-clock budget")
    tr.add_argument("--hidden", type=int, default=128)
    tr.add_argument("--horizon", type=float, default=1800.0, help="churn horizon in seconds")
    # the next-item recipe of benchmarks.next_item (Diginetica): --window-readout --negatives 8192
    # --batch-tokens 1024 --lr-decay 0.5 --weight-decay 1e-5 --transitions 30 --recent-fraction
    # 0.3 --valid-passes 5 (--transition-decay 0.6, --transition-recency 1.0 and --recent-lr 1e-4,
    # the defaults);
    # off by default: the readout costs scoring time on every event
    tr.add_argument("--window-readout", action=argparse.BooleanOptionalAction, default=False,
                    help="next-item query reads attention over the user's window and the newest "
                         "item next to the GRU state, and the repeat gate the window's statistics "
                         "(more scoring time per event)")
    tr.add_argument("--transitions", type=_count(0), default=0,
                    help="keep each item's N most frequent successors in training as a table mixed "
                         "into the next-item distribution at a weight chosen on validation (0: none)")
    tr.add_argument("--transition-decay", type=_unit, default=0.6,
                    help="with --transitions: every window item's neighbours are mixed in, the "
                         "newest at 1 and each older one at this factor of the next (0: the newest "
                         "item's only; 1: every window item the same)")
    tr.add_argument("--transition-recency", type=_non_negative, default=1.0,
                    help="with --transitions: the table weighs a training sequence exp(-(sequences "
                         "newer than it) / (this x sequences)) (0: every sequence the same)")
    tr.add_argument("--recent-fraction", type=_unit, default=0.0,
                    help="after early stopping, one more pass over the newest this share of the "
                         "training sequences at --recent-lr (0: none)")
    tr.add_argument("--recent-lr", type=_positive, default=1e-4,
                    help="the rate of the recency pass and of the validation passes")
    tr.add_argument("--valid-passes", type=_count(0), default=0,
                    help="once validation has chosen the epoch, the gate and the table's weight, "
                         "this many passes over the validation part at --recent-lr (0: none)")
    tr.add_argument("--negatives", type=_count(0), default=0,
                    help="item head trained with a sampled softmax: the batch's next items plus "
                         "N popularity^0.75 draws (0: the full softmax over the catalogue)")
    tr.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=False,
                    help="train in bfloat16 mixed precision (weights and serving stay float32; "
                         "faster matrix products on CPUs with AVX512-BF16/AMX and on GPUs)")
    tr.add_argument("--batch-tokens", type=_count(1), help="positions per update (default 4096)")
    tr.add_argument("--lr-decay", type=_decay, default=1.0,
                    help="learning-rate factor after each epoch")
    tr.add_argument("--weight-decay", type=_non_negative, default=0.0,
                    help="Adam's L2 penalty (the Diginetica recipe: 1e-5)")
    tr.add_argument("--users", type=int, default=2000, help="simulate: concurrent shoppers")
    tr.add_argument("--events", type=int, default=200_000, help="simulate: events")
    tr.set_defaults(func=cmd_train)

    dm = sub.add_parser("demo", help="broker, worker, retrain worker and simulator in a live view")
    dm.add_argument("--rate", type=float, default=20.0, help="simulated events per second")
    dm.add_argument("--users", type=int, default=50)
    dm.add_argument("--model-dir", default="var/models",
                    help="model registry; a quick model is trained there if it is empty")
    dm.add_argument("--replay", metavar="PATH",
                    help="real traffic instead of the simulator: a Taobao CSV or schema-v1 JSON lines")
    dm.add_argument("--speed", default="10", type=_speed, help="with --replay: pace multiple or 'max'")
    dm.set_defaults(func=cmd_demo)
    rt = sub.add_parser("retrain", help="retrain worker: challenger vs champion on the recent stream")
    service_args(rt)
    rt.add_argument("--once", action="store_true", help="one cycle, then exit (1 if it failed)")
    rt.add_argument("--model-dir", help="model registry (default $CLICKSTREAM_MODEL_DIR or var/models)")
    rt.add_argument("--web-port", type=int, help="/metrics and /health (default 6070)")
    rt.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto")
    rt.add_argument("--epochs", type=int, default=3, help="training epochs per cycle")
    rt.add_argument("--max-seconds", type=float, default=900.0, help="training budget per cycle")
    rt.add_argument("--batch-tokens", type=int, default=4096)
    rt.add_argument("--hidden", type=int, default=64, help="first model only (no champion yet)")
    rt.add_argument("--horizon", type=float, default=1800.0,
                    help="churn horizon in seconds, first model only")
    rt.set_defaults(func=cmd_retrain)

    md = sub.add_parser("models", help="the model registry: list | show V | promote V | rollback | announce")
    msub = md.add_subparsers(dest="models_command", required=True)
    m_list = msub.add_parser("list", help="versions (* = current) and the latest history")
    m_list.add_argument("--history", type=int, default=10, help="history lines to show")
    m_show = msub.add_parser("show", help="a version's manifest and history")
    m_show.add_argument("version")
    m_promote = msub.add_parser("promote", help="verify a version and put it in service")
    m_promote.add_argument("version")
    m_back = msub.add_parser("rollback", help="put back the version in service before the current")
    m_ann = msub.add_parser("announce", help="tell the fleet (model bus) to serve a version "
                                             "(default: the current one); CURRENT is not changed")
    m_ann.add_argument("version", nargs="?")
    for sp in (m_promote, m_back):
        sp.add_argument("--reason", default="by hand", help="recorded in the history")
        sp.add_argument("--local", action="store_true",
                        help="change this registry only; do not announce to the fleet")
    for sp in (m_promote, m_back, m_ann):
        sp.add_argument("--user", help="recorded as operator:<user> (default: the login name)")
        service_args(sp)
    for sp in (m_list, m_show, m_promote, m_back, m_ann):
        sp.add_argument("--model-dir", help="model registry (default $CLICKSTREAM_MODEL_DIR or var/models)")
    md.set_defaults(func=cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "aiokafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (broker.BrokerError, BrokerUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
