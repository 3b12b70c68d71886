"""Fault scenarios against the real broker: worker crashes, a broker restart, a peer's death,
hostile input, tampered models, many users. Short versions of benchmarks/reliability.py.

Inputs come from a librdkafka producer (its default partitioner is not Kafka's murmur2) unless a
scenario is about something else. Every wait ends as soon as its condition holds; nothing asserts
on timing (recovery times are printed and recorded by the benchmark).
"""

from __future__ import annotations

import collections
import copy
import json
import os
import random
import re
import shutil
import time
import warnings

import orjson
import pytest
import torch
from hypothesis import strategies as st
from hypothesis.errors import NonInteractiveExampleWarning
from safetensors.torch import load_file, save_file

from models.checkpoint import list_versions, load_version, save_version, set_current
from stream_app.admin import ensure_topics, topic_specs
from stream_app.config import Settings
from stream_app.records import ACTIONS

from ..modelkit import offline_predictions
from .faults import (
    MAX_STATE_BYTES_PER_USER,
    PARTITIONS,
    Feed,
    Outcome,
    by_event,
    describe,
    end_total,
    event_id_of,
    keyed,
    original,
    run_broker_restart,
    run_failover,
    run_many_users,
    run_worker_crashes,
    sim_events,
    worker_args,
)
from .helpers import metric_value, read_topic, start_worker

pytestmark = pytest.mark.integration


def _seed() -> int:
    """Random kill points, reproducible: FAULTS_SEED=<printed seed> reruns the same ones."""
    seed = int(os.environ.get("FAULTS_SEED") or random.randrange(1 << 30))
    print(f"FAULTS_SEED={seed}")
    return seed


# --- 1. worker SIGKILLed mid-stream ----------------------------------------------------------------
def test_worker_sigkill_with_librdkafka_producer_loses_nothing_and_state_equals_uninterrupted_run(
        kafka_bootstrap, namespace, tmp_path, registry):
    """Every event ends with both predictions; duplicates repeat (event_id, model_version); each
    event's original prediction equals the offline model over the user's whole history (so the
    restored state equals an uninterrupted run's); per-user order holds; no dead letters."""
    seed = _seed()
    out = run_worker_crashes(kafka_bootstrap, namespace, tmp_path, registry, users=60, events=1500,
                             kills=1 + seed % 2, rate=150, seed=seed)
    print("recoveries:", json.dumps(out.recoveries), "summary:", out.summary() | {"recoveries": 0})
    problems = out.problems(registry)
    assert not problems, describe(problems, out)
    assert out.recoveries[-1]["clean_stop_exit_code"] == 0


# --- 2. broker stopped and restarted under the worker ---------------------------------------------
@pytest.mark.parametrize("mode", ["sigterm", "sigkill"])
def test_broker_restart_on_same_data_dir_worker_reconnects_nothing_lost(mode, tmp_path, registry):
    out = run_broker_restart(tmp_path, registry, mode=mode, users=40, events=800, rate=100,
                             seed=21 if mode == "sigterm" else 22)
    print("recoveries:", json.dumps(out.recoveries))
    problems = out.problems(registry)
    assert not problems, describe(problems, out)
    assert out.recoveries[-1]["worker_alive"], describe({}, out)


# --- 3. two workers, one SIGKILLed -----------------------------------------------------------------
def test_peer_sigkilled_survivor_takes_over_partitions_and_restores_state(kafka_bootstrap, namespace,
                                                                          tmp_path, registry):
    out, survivor = run_failover(kafka_bootstrap, namespace, tmp_path, registry, users=60,
                                 events=1500, rate=100, seed=31)
    rec = out.recoveries[-1]
    print("recovery:", json.dumps(rec))
    problems = out.problems(registry)  # offline equality: the moved users' state came back whole
    assert not problems, describe(problems, out)
    assert rec["moved_partitions"], "the killed worker held no partitions: nothing was tested"
    assert rec["survivor_alive"] and rec["survivor_partitions"] == list(range(PARTITIONS)), rec


# --- 4. hostile input ------------------------------------------------------------------------------
def _ev(uid: str, eid: str, ts: float, **kw) -> dict:
    return {"event_id": eid, "user_id": uid, "ts": ts, "action": "view", "item_id": "i1",
            "category_id": "c1", **kw}


def _hand_written(now: float) -> list[tuple[str, str, bytes | None, bytes]]:
    """(label, expected, key, value); expected: predict | replay | dlq | dlq:<reason> | either."""
    rnd = random.Random(4)
    j = orjson.dumps
    ok = _ev("h-ok", "h-ok-1", now - 50)
    deep = {"a": None}
    for _ in range(60):
        deep = {"a": [deep]}
    raw_ts = b'{"event_id":"%s","user_id":"h-ts","ts":%s,"action":"view","item_id":"i1"}'
    return [
        ("random bytes", "dlq", b"h-rnd", bytes(rnd.randrange(256) for _ in range(300))),
        ("truncated json", "dlq", b"h-ok", j(ok)[:-7]),
        ("deeply nested json (past any parser's limit)", "dlq", b"h-deep",
         b'{"event_id":"h-deep-1","x":' + b"[" * 20_000 + b"]" * 20_000 + b"}"),
        ("nested extra field (ignored)", "predict", b"h-nest",
         j(_ev("h-nest", "h-nest-1", now - 49, x=deep))),
        ("huge string field (> 64 KiB message)", "dlq", b"h-huge",
         j(_ev("h-huge", "h-huge-1", now - 48, item_id="x" * 100_000))),
        ("huge message (300 KiB of extra fields)", "dlq", b"h-huge",
         j(_ev("h-huge", "h-huge-2", now - 47, pad=["y" * 1000] * 300))),
        ("string over the field limit", "dlq", b"h-long",
         j(_ev("h-long", "h-long-1", now - 46, item_id="z" * 5000))),
        ("ts NaN", "dlq", b"h-ts", raw_ts % (b"h-ts-nan", b"NaN")),
        ("ts Infinity", "dlq", b"h-ts", raw_ts % (b"h-ts-inf", b"Infinity")),
        ("ts -Infinity", "dlq", b"h-ts", raw_ts % (b"h-ts-ninf", b"-Infinity")),
        ("ts 1e400", "dlq", b"h-ts", raw_ts % (b"h-ts-big", b"1e400")),
        ("ts negative", "dlq", b"h-ts", j(_ev("h-ts", "h-ts-neg", -5.0))),
        ("ts zero", "dlq", b"h-ts", j(_ev("h-ts", "h-ts-zero", 0))),
        ("ts milliseconds", "dlq", b"h-ts", j(_ev("h-ts", "h-ts-ms", now * 1000))),
        ("ts boolean", "dlq", b"h-ts", j(_ev("h-ts", "h-ts-bool", True))),
        ("ts far future 2096 (inside 2000..2100)", "dlq:future_timestamp", b"evil",
         j(_ev("evil", "evil-1", 4_000_000_000))),
        ("ts far future as RFC 3339", "dlq:future_timestamp", b"evil",
         j(_ev("evil", "evil-2", "2096-10-02T07:06:40+00:00"))),
        ("ts one hour ahead", "dlq:future_timestamp", b"evil", j(_ev("evil", "evil-3", now + 3600))),
        ("unknown action", "dlq", b"h-act", j(_ev("h-act", "h-act-1", now - 45, action="hover"))),
        ("action null", "dlq", b"h-act", j(_ev("h-act", "h-act-2", now - 45, action=None))),
        ("empty user id, empty key", "dlq", b"", j(_ev("", "h-empty-1", now - 44))),
        ("missing user id", "dlq", b"h-miss", j({k: v for k, v in _ev("x", "h-miss-1", now - 43).items()
                                                 if k != "user_id"})),
        ("user id a number", "dlq", b"123", j(_ev(123, "h-num-1", now - 43))),  # type: ignore[arg-type]
        ("message key missing", "either", None, j(_ev("h-nokey", "h-nokey-1", now - 42))),
        ("key is another user", "dlq", b"someone-else", j(_ev("h-mism", "h-mism-1", now - 42))),
        ("non-UTF-8 value", "dlq", b"h-utf", b'{"event_id":"h-utf-1","user_id":"h-utf","ts":%d,'
         b'"action":"view","item_id":"\xff\xfe\xfd"}' % int(now - 41)),
        ("non-UTF-8 key", "dlq", b"\xff\xfe", j(_ev("h-badkey", "h-badkey-1", now - 41))),
        ("empty value", "dlq", b"h-empty", b""),
        ("json null", "dlq", b"h-null", b"null"),
        ("json array", "dlq", b"h-arr", j([ok])),
        ("json string", "dlq", b"h-str", b'"view"'),
        ("price NaN", "dlq", b"h-price", b'{"event_id":"h-price-1","user_id":"h-price","ts":%d,'
         b'"action":"view","item_id":"i1","price":NaN}' % int(now - 40)),
        ("price 1e300", "dlq", b"h-price", j(_ev("h-price", "h-price-2", now - 40, price=1e300))),
        ("price negative", "dlq", b"h-price", j(_ev("h-price", "h-price-3", now - 40, price=-1.0))),
        ("unicode user id", "predict", "h-üñí-☃".encode(), j(_ev("h-üñí-☃", "h-uni-1", now - 39))),
        ("valid event", "predict", b"h-ok", j(ok)),
        ("duplicate event id", "replay", b"h-ok", j(ok)),
        ("out of order 1", "predict", b"h-ooo", j(_ev("h-ooo", "h-ooo-1", now - 20))),
        ("out of order 2 (older)", "predict", b"h-ooo", j(_ev("h-ooo", "h-ooo-2", now - 200))),
        ("out of order 3 (older still)", "predict", b"h-ooo", j(_ev("h-ooo", "h-ooo-3", now - 300))),
    ]


def _scalar():
    return st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20),
                     st.floats(allow_nan=True, allow_infinity=True))


@st.composite
def _hostile_message(draw, now: float):
    fields = {
        "event_id": st.one_of(st.uuids().map(lambda u: f"hyp-{u}"), _scalar()),
        "user_id": st.one_of(st.text(max_size=12).map(lambda s: f"hyp-{s}"), st.just(""), _scalar()),
        "ts": st.one_of(st.floats(now - 86400, now - 1), st.just(4e9), st.integers(),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=25)),
        "action": st.one_of(st.sampled_from(ACTIONS), _scalar()),
        "item_id": st.one_of(st.text(min_size=1, max_size=20), _scalar()),
        "price": st.one_of(st.floats(0, 1e6), _scalar()),
        "extra": st.recursive(_scalar(), lambda c: st.lists(c, max_size=3) | st.dictionaries(
            st.text(max_size=5), c, max_size=3), max_leaves=20),
    }
    obj = draw(st.fixed_dictionaries({}, optional=fields))
    raw = json.dumps(obj, allow_nan=True).encode()
    kind = draw(st.sampled_from(["json", "json", "json", "truncated", "bytes"]))
    if kind == "truncated":
        raw = raw[:draw(st.integers(0, max(len(raw) - 1, 0)))]
    elif kind == "bytes":
        raw = draw(st.binary(max_size=300))
    uid = obj.get("user_id")
    key = draw(st.one_of(st.just(uid.encode() if isinstance(uid, str) else None), st.none(),
                         st.binary(max_size=8)))
    return ("hypothesis", "either", key, raw)


def _hypothesis_batch(now: float, n: int) -> list[tuple[str, str, bytes | None, bytes]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonInteractiveExampleWarning)
        return st.lists(_hostile_message(now), min_size=n, max_size=n).example()


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))


def test_hostile_input_ends_as_predictions_or_dead_letters_and_cannot_erase_state(
        kafka_bootstrap, namespace, tmp_path, registry):
    """Hand-written and Hypothesis-generated hostile messages interleaved with normal users'
    events. Every message ends as a prediction or a dead letter with a reason, counted one for one;
    the worker keeps running with bounded memory; a far-future event is dead-lettered
    (`future_timestamp`) and, after several idle sweeps, the normal users' later events are still
    predicted from their whole history (offline equality)."""
    s = Settings(bootstrap=kafka_bootstrap, namespace=namespace, partitions=PARTITIONS)
    ensure_topics(kafka_bootstrap, topic_specs(s))
    now = time.time()
    normal = sim_events(30, 600, seed=41, end=now - 120)
    half = len(normal) // 2
    rnd = random.Random(42)
    hand = _hand_written(now)
    hyp = _hypothesis_batch(now, 40)
    far_future = [h for h in hand if h[0].startswith("ts far future")]
    rest = [h for h in hand if h not in far_future]
    # part A: the first half of normal events, the far-future events, half of the hand-written ones;
    # part B (after the worker has had idle sweeps): the rest, and the Hypothesis batch
    parts = []
    for normals, hostile in ((normal[:half], far_future + rest[: len(rest) // 2]),
                             (normal[half:], rest[len(rest) // 2:] + hyp)):
        # hostile messages at random places, in their own order (a duplicate follows its
        # original; out-of-order events stay out of order)
        msgs = [("normal", "predict", k, v) for k, v in keyed(normals)]
        for pos, h in zip(sorted(rnd.sample(range(len(msgs) + len(hostile)), len(hostile))), hostile,
                          strict=True):
            msgs.insert(pos, h)
        parts.append(msgs)
    env = {"CLICKSTREAM_PARTITIONS": str(PARTITIONS), "CLICKSTREAM_SWEEP_INTERVAL_S": "1",
           "CLICKSTREAM_MAX_FUTURE_S": "600"}
    w = start_worker(kafka_bootstrap, namespace, tmp_path, env=env, extra_args=worker_args(registry))
    sent: list[tuple[str, str, bytes | None, bytes, tuple[int, int]]] = []
    try:
        for n, msgs in enumerate(parts):
            feed = Feed(kafka_bootstrap, s.topics.events, [(k, v) for _, _, k, v in msgs],
                        client="kafka-python")
            feed.start()
            feed.finish()
            sent += [(*m, feed.placed[i]) for i, m in enumerate(msgs)]  # type: ignore[misc]
            # wait until every message so far is accounted for (or give up and let asserts speak)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and w.alive():
                if len(_classify(kafka_bootstrap, s, sent)[0]) == len(sent):
                    break
                time.sleep(1.0)
            if n == 0:
                time.sleep(3.5)  # several idle sweeps (interval 1 s) see the far-future event
        alive = w.alive()
        metrics = w.metrics_text() if alive else ""
        rss = _rss_bytes(w.proc.pid) if alive else 0
    finally:
        w.stop()
    log_tail = w.log()[-3000:]
    assert alive, f"the worker died on hostile input:\n{log_tail}"
    assert "clickstream_events_consumed_total" in metrics
    assert rss < 2 << 30, f"worker RSS {rss / 2**20:.0f} MiB"

    outcome, unaccounted, dlq, preds = _classify(kafka_bootstrap, s, sent)
    first_stuck = {}  # per partition, the earliest message without an outcome: the likely culprit
    for m in sorted(unaccounted, key=lambda m: m[4]):
        first_stuck.setdefault(m[4][0], (m[0], m[4], m[2], m[3][:120]))
    assert not unaccounted, f"{len(unaccounted)} messages neither predicted nor dead-lettered; " \
                            f"first per partition: {first_stuck}\n{log_tail}"
    # one for one: distinct dead letters (by source offset) + predicted messages == messages sent
    n_dlq = sum(1 for o in outcome.values() if o[0] == "dlq")
    n_pred = sum(1 for o in outcome.values() if o[0] == "predict")
    assert n_dlq + n_pred == len(sent) and len(dlq) == n_dlq, (n_dlq, n_pred, len(sent), len(dlq))
    assert all(r for r, _ in dlq.values()), "a dead letter without x-dlq-reason"
    wrong = []
    for i, (label, expected, _, _, _) in enumerate(sent):
        got, reason = outcome[i]
        if expected in ("predict", "replay") and got != "predict":
            wrong.append((label, expected, got, reason))
        elif expected.startswith("dlq") and (got != "dlq" or (":" in expected and
                                                              reason != expected.split(":")[1])):
            wrong.append((label, expected, got, reason))
    assert not wrong, wrong
    dup = preds["h-ok-1"]
    assert len(dup) >= 2 and not dup[0]["replayed"] and any(p["replayed"] for p in dup[1:]), dup
    # the far-future event did not erase anyone: normal users' later events use their history
    ref = offline_predictions(registry, normal)
    churn = by_event(read_topic(kafka_bootstrap, s.topics.churn, len(sent), timeout=30))
    differs = []
    for e in normal:
        a, c = original(preds[e["event_id"]]), original(churn.get(e["event_id"], []))
        probs, p_churn, _ = ref[e["event_id"]]
        if (a is None or c is None or abs(c["churn_probability"] - p_churn) > 1e-5
                or max(abs(x - y) for x, y in zip(a["action_probs"].values(), probs, strict=True)) > 1e-5):
            differs.append(e["event_id"])
    expired = metric_value(metrics, "clickstream_expired_users_total")
    assert not differs, f"{len(differs)} normal events differ from offline (expired users: {expired})"
    assert (metric_value(metrics, "clickstream_late_events_total") or 0) >= 2


def _classify(bootstrap, s, sent):
    """message index -> ("dlq", reason) | ("predict", None) | missing; the dead letters by source;
    predictions by event id."""
    # read up to the end offsets: one poll returns at most 500 records
    dlq_records = read_topic(bootstrap, s.topics.dead_letters, end_total(bootstrap, s.topics.dead_letters),
                             timeout=30)
    dlq = {}
    for r in dlq_records:
        h = dict(r.headers or [])
        src = (int(h.get("x-dlq-source-partition", b"-1")), int(h.get("x-dlq-source-offset", b"-1")))
        dlq[src] = ((h.get("x-dlq-reason") or b"").decode(), r)
    preds = by_event(read_topic(bootstrap, s.topics.next_action,
                                end_total(bootstrap, s.topics.next_action), timeout=30))
    outcome, unaccounted = {}, []
    for i, (_, _, _, value, placed) in enumerate(sent):
        if placed in dlq:
            outcome[i] = ("dlq", dlq[placed][0])
            continue
        try:
            eid = orjson.loads(value).get("event_id")
        except (orjson.JSONDecodeError, AttributeError):
            eid = None
        if isinstance(eid, str) and eid in preds:
            outcome[i] = ("predict", None)
        else:
            unaccounted.append(sent[i])
    return outcome, unaccounted, dlq, preds


# --- 5. tampered model artifacts -------------------------------------------------------------------
def _tampered_version(reg) -> str:
    """A version whose weights file was modified after its manifest (checksum) was written."""
    lm = load_version(reg)
    vid = save_version(reg, lm.model, lm.items, lm.categories, {"source": "tampered"}, {},
                       make_current=False)
    path = reg / "versions" / vid / "weights.safetensors"
    tensors = load_file(str(path))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.5
    save_file(tensors, str(path))
    return vid


def _nan_version(reg) -> str:
    """A version with a consistent checksum but NaN weights (made from the first, intact version:
    CURRENT names the tampered one by now)."""
    lm = load_version(reg, list_versions(reg)[0])
    model = copy.deepcopy(lm.model)
    with torch.no_grad():
        for p in list(model.parameters())[:3]:
            p.fill_(float("nan"))
    return save_version(reg, model, lm.items, lm.categories, {"source": "nan"}, {}, make_current=False)


def test_tampered_or_nan_model_version_is_refused_and_serving_continues(kafka_bootstrap, namespace,
                                                                        tmp_path, registry):
    reg = tmp_path / "registry"
    shutil.copytree(registry, reg)
    v1 = load_version(reg).version
    s = Settings(bootstrap=kafka_bootstrap, namespace=namespace, partitions=PARTITIONS)
    ensure_topics(kafka_bootstrap, topic_specs(s))
    evs = sim_events(20, 450, seed=51)
    thirds = [evs[:150], evs[150:300], evs[300:]]
    env = {"CLICKSTREAM_PARTITIONS": str(PARTITIONS), "CLICKSTREAM_MODEL_POLL_S": "1"}
    w = start_worker(kafka_bootstrap, namespace, tmp_path, env=env, extra_args=worker_args(reg))
    refusals = {}
    try:
        for n, (part, make_bad) in enumerate(zip(thirds, (None, _tampered_version, _nan_version),
                                                 strict=True)):
            if make_bad is not None:
                vid = make_bad(reg)
                set_current(reg, vid)
                refused = re.compile(rf"(?i)(refus|reject)[^\n]*{vid}|{vid}[^\n]*(refus|reject)")
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and w.alive() and not refused.search(w.log()):
                    time.sleep(0.25)
                refusals[make_bad.__name__] = bool(refused.search(w.log()))
                assert w.alive(), f"worker died on {make_bad.__name__}:\n{w.log()[-3000:]}"
            feed = Feed(kafka_bootstrap, s.topics.events, keyed(part))
            feed.start()
            feed.finish()
            done = sum(len(p) for p in thirds[: n + 1])
            read_topic(kafka_bootstrap, s.topics.next_action, done, timeout=120, distinct=event_id_of)
        metrics = w.metrics_text()
        alive = w.alive()
    finally:
        w.stop()
    assert alive and all(refusals.values()), (refusals, w.log()[-3000:])
    assert metric_value(metrics, "clickstream_model_info", version=v1) == 1.0
    out = Outcome("tampered_model", evs)
    out.collect(kafka_bootstrap, s, timeout=60)
    versions = collections.Counter(orjson.loads(r.value)["model_version"] for r in out.next_action)
    assert set(versions) == {v1}, versions
    set_current(reg, v1)  # the reference is the version the worker kept serving
    problems = out.problems(reg)  # still v1's predictions, from an intact state
    assert not problems, describe(problems, out)


# --- 6. many distinct users passing through --------------------------------------------------------
def test_many_users_state_stays_within_window_and_idle_users_are_swept(kafka_bootstrap, namespace,
                                                                       tmp_path, registry):
    """20k one-event users and a few heavy users (3 windows' worth of events each), event times
    over two hours, window 60 s, sweep every second: state per user stays within the window's
    size, and at the end only users seen within a window of their partition's clock remain."""
    r = run_many_users(kafka_bootstrap, namespace, tmp_path, registry, users=20_000)
    summary = r.summary()
    print("many users:", json.dumps(summary))
    assert r.worker_alive, r.log.read_text(errors="replace")[-3000:]
    assert r.predictions_received == r.events, summary
    assert summary["peak_state_bytes_per_user"] <= MAX_STATE_BYTES_PER_USER, summary
    assert r.final["active_users"] <= r.bound_active_at_end, summary
    assert r.final["state_bytes"] <= MAX_STATE_BYTES_PER_USER * max(r.final["active_users"], 1), summary
    assert r.final["expired_users_total"] >= r.users - r.bound_active_at_end, summary
