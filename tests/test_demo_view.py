"""The demo's live view, without processes: /metrics text -> figures -> what is shown.

The expositions come from the worker's and the retrain worker's own metric objects (so a renamed
metric breaks these tests, not the demo), filled with known numbers."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from rich.console import Console

from clickstream_tools import demo_view as dv
from stream_app.instruments import Metrics
from stream_app.retrain import RetrainMetrics

V1, V2 = "20261123T100000Z-aaaa", "20261123T110000Z-bbbb"


def worker_text(events: int = 1000, fast: int = 90, slow: int = 10, promoted: bool = False) -> str:
    m = Metrics(CollectorRegistry())
    m.events_consumed.labels("accepted").inc(events - 20)
    m.events_consumed.labels("rejected").inc(20)
    m.events_rejected.labels("invalid_json").inc(12)
    m.events_rejected.labels("key_mismatch").inc(8)
    m.messages_produced.labels("predictions.next_action").inc(events - 20)
    m.messages_produced.labels("predictions.churn").inc(events - 20)
    m.messages_produced.labels("clickstream.events.dlq").inc(20)
    for _ in range(fast):
        m.latency.observe(0.03)  # the (0.025, 0.05] bucket
    for _ in range(slow):
        m.latency.observe(0.7)  # the (0.5, 1.0] bucket
    m.online_scored.labels(V1, "action").inc(200)
    m.online_action_correct.labels(V1).inc(130)
    m.online_scored.labels(V1, "item").inc(100)
    m.online_item_hits.labels(V1).inc(40)
    m.online_item_rr.labels(V1).inc(20)
    if promoted:
        m.online_scored.labels(V2, "action").inc(50)
        m.online_action_correct.labels(V2).inc(40)
    m.set_model(V2 if promoted else V1, "cpu")
    return m.exposition().decode()


def retrain_text(promoted: int = 0, rejected: int = 1) -> str:
    r = RetrainMetrics(CollectorRegistry())
    for outcome, n in (("promoted", promoted), ("rejected", rejected)):
        for _ in range(n):
            r.observe({"outcome": outcome, "ended_unix": 1_000.0, "duration_s": 42.0,
                       "metrics": {"champion": {"item_hit_at_20": 0.31},
                                   "challenger": {"item_hit_at_20": 0.36}}})
    return r.exposition().decode()


def test_worker_figures_from_the_workers_own_metrics():
    f = dv.parse_worker(worker_text(), t=5.0)
    assert f.events == 1000 and f.predictions == 2 * 980  # the dead-letter topic is not a prediction
    assert f.dead_letters == {"invalid_json": 12, "key_mismatch": 8}  # zero reasons left out
    assert f.model_version == V1 and f.device == "cpu" and f.latency_count == 100
    o = f.online[V1]
    assert o.action_accuracy == pytest.approx(0.65) and o.item_hit_rate == pytest.approx(0.4)
    assert o.item_mrr == pytest.approx(0.2)
    assert dict(f.latency_buckets)[float("inf")] == 100


def test_histogram_quantile_interpolates_like_prometheus():
    b = ((0.025, 0.0), (0.05, 90.0), (0.5, 90.0), (1.0, 100.0), (float("inf"), 100.0))
    assert dv.histogram_quantile(0.5, b) == pytest.approx(0.025 + 0.025 * 50 / 90)
    assert dv.histogram_quantile(0.99, b) == pytest.approx(0.5 + 0.5 * 9 / 10)
    assert dv.histogram_quantile(0.5, ((1.0, 0.0), (float("inf"), 0.0))) is None
    assert dv.histogram_quantile(0.99, ((1.0, 10.0), (float("inf"), 20.0))) == 1.0  # in +Inf


def test_rates_and_latency_come_from_the_recent_window_not_since_start():
    s = dv.DemoState()
    s.add_worker(dv.parse_worker(worker_text(events=1000, fast=0, slow=100), t=100.0))
    s.add_worker(dv.parse_worker(worker_text(events=1200, fast=100, slow=100), t=110.0))
    fr = s.frame(110.0)
    assert fr.events_per_s == pytest.approx(20.0) and fr.predictions_per_s == pytest.approx(40.0)
    assert fr.latency_window == "last 10 s"
    assert fr.p99_s is not None and fr.p99_s <= 0.05  # the slow ones are older than the window
    one = dv.DemoState()
    one.add_worker(dv.parse_worker(worker_text(fast=90, slow=10), t=1.0))
    f1 = one.frame(1.0)
    assert f1.events_per_s is None and f1.latency_window == "since start" and f1.p99_s > 0.5


def test_happenings_retrain_cycles_and_the_model_changing():
    s = dv.DemoState()
    s.add_worker(dv.parse_worker(worker_text(), t=0.0))
    s.add_retrain(dv.parse_retrain(retrain_text(rejected=1),
                                   {"outcome": "rejected", "reason": "only 89 events"}), t=1.0)
    s.add_retrain(dv.parse_retrain(retrain_text(rejected=1), None), t=2.0)  # nothing new
    s.add_retrain(dv.parse_retrain(retrain_text(promoted=1, rejected=1),
                                   {"outcome": "promoted", "version": V2, "reason": "better"}), t=3.0)
    s.add_worker(dv.parse_worker(worker_text(promoted=True), t=4.0))
    h = list(s.happenings)
    assert len(h) == 4 == s.noted
    assert h[0].endswith(f"model {V1} in service on cpu")
    assert h[1].endswith("retrain cycle rejected (42 s): only 89 events")
    assert h[2].endswith(f"retrain cycle promoted {V2} (42 s): better")
    assert h[3].endswith(f"model in service: {V1} -> {V2}")
    r = s.frame(5.0).retrain
    assert r is not None and r.cycles == {"promoted": 1, "rejected": 1, "failed": 0}
    assert r.eval[("challenger", "item_hit_at_20")] == pytest.approx(0.36)


def test_latest_predictions_newest_first_one_per_user_with_churn():
    s = dv.DemoState(users_shown=2)
    s.add_churn("u1", 0.4)  # churn may arrive before the next-action prediction of its event
    for i, user in enumerate(["u1", "u2", "u1", "u3"]):
        s.add_prediction(dv.prediction_from_json({
            "user_id": user, "action": "view", "model_version": V1,
            "action_probs": {"view": 0.6 - i / 100, "purchase": 0.1},
            "top_items": [{"item_id": f"i{k}", "p": 0.1} for k in range(5)]}))
    s.add_churn("u3", 0.25)
    s.add_churn("nobody", 0.9)  # churn for a user never shown: nothing to attach it to
    latest = s.frame(0.0).latest
    assert [p.user_id for p in latest] == ["u3", "u1"]
    assert latest[0].churn == 0.25 and latest[0].next_action == "view"
    assert latest[0].p == pytest.approx(0.57) and latest[0].top_items == ("i0", "i1", "i2")
    assert latest[1].churn == 0.4


def test_render_and_line_show_every_figure():
    s = dv.DemoState()
    s.add_worker(dv.parse_worker(worker_text(events=1000), t=100.0))
    s.add_worker(dv.parse_worker(worker_text(events=1200, promoted=True), t=110.0))
    s.add_retrain(dv.parse_retrain(retrain_text(promoted=1), {"outcome": "promoted", "version": V2}),
                  t=110.0)
    s.add_prediction(dv.LatestPrediction("u42", "add_to_cart", "purchase", 0.41, ("i9", "i3"), V2, 0.2))
    fr = s.frame(110.0, header="clickstream-gru demo · test")
    console = Console(record=True, width=160, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(dv.render(fr))
    screen = console.export_text()
    for shown in ("20.0/s", "p50", "p99", "invalid_json 12", "key_mismatch 8", V1, V2, "(in service)",
                  "65.0%", "40.0%", "80.0%", "u42", "purchase", "i9, i3", "0.20",
                  "promoted 1, rejected 1, failed 0", "challenger hit@20 0.360",
                  f"model in service: {V1} -> {V2}", "clickstream-gru demo · test"):
        assert shown in screen, shown
    text = dv.line(fr)
    for shown in ("events 20.0/s", "p50", f"model {V2}", f"{V1}: action 65.0% item 40.0%",
                  "invalid_json=12", "retrain promoted/rejected/failed 1/1/0"):
        assert shown in text, shown
    empty = dv.line(dv.DemoState().frame(0.0))
    assert "events -" in empty and "model -" in empty and "retrain promoted/rejected/failed -" in empty


def test_only_the_newest_versions_are_listed_with_the_one_in_service():
    o = dv.OnlineFigures(10, 5, 10, 2, 1)
    online = {f"v{i:02d}": o for i in range(7)}
    assert dv._newest(online, "v06") == ["v03", "v04", "v05", "v06"]
    assert dv._newest(online, "v01") == ["v01", "v04", "v05", "v06"]  # rolled back: still shown
    assert dv._newest(online, "v06", 2) == ["v05", "v06"]
    fr = dv.Frame(t=0.0, events_per_s=None, predictions_per_s=None, events_total=0, p50_s=None,
                  p99_s=None, latency_window="since start", model_version="v06", device="cpu",
                  online=online, dead_letters={}, retrain=None, latest=(), happenings=())
    console = Console(record=True, width=160, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(dv.render(fr))
    screen = console.export_text()
    assert "(3 older versions)" in screen and "v02" not in screen and "v06 (in service)" in screen
    assert "v05: action 50.0% item 20.0% v06: action" in dv.line(fr)
