"""The provisioned Grafana dashboard (deploy/grafana) queries only metrics the code exports."""

from __future__ import annotations

import json

import yaml

from . import promql

GRAFANA = promql.ROOT / "deploy" / "grafana"


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of every provisioned dashboard."""
    out = []
    for path in sorted(promql.DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            out += [(panel["title"], t["expr"]) for t in panel.get("targets", [])]
    return out


def test_every_dashboard_query_selects_known_metrics():
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    known = promql.known_names()
    for title, expr in exprs:
        names = promql.metric_names(expr)
        assert names, f"{title}: no metric in {expr}"
        assert not names - known, f"{title}: unknown metrics {names - known} in {expr}"


def test_dashboard_covers_what_operators_asked_for():
    selected = set().union(*(promql.metric_names(e) for _, e in dashboard_exprs()))
    for name in ("clickstream_events_consumed_total", "clickstream_messages_produced_total",
                 "clickstream_consumer_lag_messages", "clickstream_event_to_prediction_seconds_bucket",
                 "clickstream_events_rejected_total", "clickstream_model_info",
                 "clickstream_online_item_hits_total", "clickstream_online_action_correct_total",
                 "clickstream_active_users", "clickstream_state_bytes",
                 "clickstream_hidden_cache_lookups_total", "clickstream_retrain_cycles_total"):
        assert name in selected, name


def test_provisioning_points_at_the_dashboards_and_the_datasource_they_use():
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    uids = {d["uid"] for d in ds["datasources"]}
    for path in promql.DASHBOARDS.glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            for t in panel.get("targets", []):
                assert t["datasource"]["uid"] in uids, panel["title"]
    prov = yaml.safe_load((GRAFANA / "provisioning/dashboards/clickstream.yml").read_text())
    assert prov["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
