"""A real Prometheus server (Debian's `prometheus`, installed by `make test`) scraping a live worker
with our rules loaded.

What it checks, and what it does not:
- every metric a stream worker exports that the dashboard or the rules select has samples in
  Prometheus after some traffic (read from the server's own label index);
- the metrics of the retrain worker, which this test does not run, are checked only against the
  code that declares them (stream_app.retrain.RetrainMetrics, through tests/promql.py);
- every rule of rules.yml loads and evaluates without error on the server, and every dashboard
  query runs without error against it;
- ClickstreamWorkerDown fires once the worker is stopped (its `for:` shortened to 2 s in the test
  copy of the rules; the expression is the deployed one).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from clickstream_tools.broker import free_port
from clickstream_tools.simulator import SimConfig, produce
from stream_app.admin import ensure_topics, topic_specs
from stream_app.config import Settings

from .. import promql
from ..test_grafana import dashboard_exprs
from .helpers import read_topic, start_worker

pytestmark = pytest.mark.integration

DEADLINE_S = 180.0  # generous: polls end as soon as the condition holds


class Prometheus:
    def __init__(self, proc: subprocess.Popen, port: int, log_path: Path) -> None:
        self.proc, self.port, self.log_path = proc, port, log_path

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_for(what: str, check: Callable[[], Any], prom: Prometheus | None = None) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(1)
    raise AssertionError(f"{what}: not within {DEADLINE_S:.0f}s (last: {last})"
                         + (f"\nprometheus log:\n{prom.log()[-3000:]}" if prom else ""))


def rules_copy(tmp_path: Path) -> Path:
    """rules.yml with ClickstreamWorkerDown's `for:` shortened; everything else as deployed."""
    doc = yaml.safe_load(promql.RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "ClickstreamWorkerDown":
                rule["for"] = "2s"
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Callable[[int], Prometheus]]:
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.fail("prometheus is not installed: run `make prometheus` (deploy/install-prometheus.sh)")
    started: list[Prometheus] = []

    def start(worker_port: int) -> Prometheus:
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules_copy(tmp_path))],
            "scrape_configs": [{"job_name": "clickstream-worker",
                                "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}]}],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        log_path = tmp_path / "prometheus.log"
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(
                [exe, f"--config.file={tmp_path / 'prometheus.yml'}",
                 f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
                 "--storage.tsdb.retention.time=1h"],
                stdout=out, stderr=subprocess.STDOUT)
        prom = Prometheus(proc, port, log_path)
        started.append(prom)

        def ready() -> bool:
            assert proc.poll() is None, f"prometheus exited:\n{prom.log()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for("prometheus ready", ready, prom)
        return prom

    yield start
    for prom in started:
        prom.proc.terminate()
        try:
            prom.proc.wait(30)
        except subprocess.TimeoutExpired:
            prom.proc.kill()
            prom.proc.wait()


def test_prometheus_scrapes_a_live_worker_and_alerts_when_it_stops(
        kafka_bootstrap, namespace, tmp_path, registry, start_prometheus):
    s = Settings(bootstrap=kafka_bootstrap, namespace=namespace, partitions=2)
    ensure_topics(kafka_bootstrap, topic_specs(s))
    worker = start_worker(kafka_bootstrap, namespace, tmp_path, env={"CLICKSTREAM_PARTITIONS": "2"},
                          extra_args=["--model-dir", str(registry), "--device", "cpu"])
    try:
        prom = start_prometheus(worker.web_port)
        # traffic with repeat visitors (so predictions get scored online) and a few bad messages
        counts = produce(kafka_bootstrap, s.topics.events,
                         SimConfig(users=30, events=600, seed=5, invalid_rate=0.05))
        read_topic(kafka_bootstrap, s.topics.next_action, counts["valid"], timeout=120)

        selected = set().union(*(promql.metric_names(e) for _, e in dashboard_exprs()),
                               *(promql.metric_names(r["expr"]) for r in promql.rules()))
        live = selected & promql.worker_exported_names()
        assert "clickstream_online_item_hits_total" in live and "clickstream_model_info" in live

        def missing() -> set[str]:
            return live - set(prom.api("label/__name__/values"))

        wait_for(f"worker metrics in Prometheus (missing: {missing()})", lambda: not missing(), prom)

        # the retrain worker's metrics are not scraped here: declared in code is all we check
        retrain_selected = {n for n in selected if n.startswith("clickstream_retrain_")}
        assert retrain_selected and retrain_selected <= promql.retrain_exported_names()

        def rules_evaluated() -> list[dict]:
            found = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
            return found if all(r.get("lastEvaluation", "").startswith("2") for r in found) else []

        loaded = wait_for("every rule evaluated once", rules_evaluated, prom)
        assert {r["name"] for r in loaded} == {r.get("record") or r["alert"] for r in promql.rules()}
        assert all(r["health"] == "ok" for r in loaded), [(r["name"], r.get("lastError"))
                                                          for r in loaded if r["health"] != "ok"]
        assert prom.api("query", query="up")["result"][0]["value"][1] == "1"

        # each dashboard query runs (Grafana's variable set); those over worker metrics only come to
        # show series (NaN samples count: a ratio of idle rates is still an answer) once Prometheus
        # holds two scrapes in their rate windows
        for title, expr in dashboard_exprs():
            query = expr.replace("$__rate_interval", "1m")
            try:
                result = prom.api("query", query=query)["result"]
            except urllib.error.HTTPError as e:
                pytest.fail(f"dashboard panel {title!r}: {expr}: {e.read().decode()}")
            if promql.metric_names(expr) <= live | {"up"} and not result:
                wait_for(f"dashboard panel {title!r} showing data ({expr})",
                         lambda q=query: prom.api("query", query=q)["result"], prom)

        worker.stop()
        instance = f"127.0.0.1:{worker.web_port}"

        def worker_down_firing() -> list[dict]:
            return [a for a in prom.api("alerts")["alerts"]
                    if a["labels"]["alertname"] == "ClickstreamWorkerDown" and a["state"] == "firing"]

        firing = wait_for("ClickstreamWorkerDown firing", worker_down_firing, prom)
        assert firing[0]["labels"]["instance"] == instance
        assert firing[0]["labels"]["job"] == "clickstream-worker"
    finally:
        worker.stop()
