"""promtool on deploy/prometheus/: the rules and config parse, and the alert unit tests pass.

promtool comes with Prometheus, which `make test` / `make unit` install where missing
(deploy/install-prometheus.sh). Without it these tests fail: they never skip.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from . import promql

PROM_DIR = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"


def promtool(*args: str) -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not installed: run `make prometheus` (deploy/install-prometheus.sh)")
    r = subprocess.run([exe, *args], cwd=PROM_DIR, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"promtool {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def test_rules_are_valid():
    assert "SUCCESS" in promtool("check", "rules", "rules.yml")


def test_alert_unit_tests_pass():
    assert "SUCCESS" in promtool("test", "rules", "rules_test.yml")


def test_config_is_valid():
    out = promtool("check", "config", "prometheus.yml")
    assert "prometheus.yml is valid" in out and "rules.yml" in out


def test_rules_select_only_metrics_the_code_exports():
    known = promql.known_names()
    for rule in promql.rules():
        unknown = promql.metric_names(rule["expr"]) - known
        assert not unknown, f"{rule.get('record') or rule.get('alert')}: unknown metrics {unknown}"


def test_metric_name_extraction():
    expr = ('histogram_quantile(0.99, sum by (job, le) (rate(a_seconds_bucket{topic=~"x.y"}[5m])))'
            ' / on (job) group_left b:rec:rate1m offset 5m > 0.5 and c_total unless up')
    assert promql.metric_names(expr) == {"a_seconds_bucket", "b:rec:rate1m", "c_total", "up"}


def test_every_alert_has_a_firing_and_a_quiet_unit_test_and_a_runbook():
    alerts = {r["alert"]: r for r in promql.rules() if "alert" in r}
    cases = [c for t in yaml.safe_load((PROM_DIR / "rules_test.yml").read_text())["tests"]
             for c in t.get("alert_rule_test", [])]
    for name, rule in alerts.items():
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in mine), f"{name}: no test where it fires"
        assert any(not c["exp_alerts"] for c in mine), f"{name}: no test where it stays quiet"
        assert rule["annotations"]["runbook"] == f"README.md, Operations: {name}"


def test_readme_explains_every_alert():
    readme = (promql.ROOT / "README.md").read_text()
    ops = readme[readme.index("## Operations"):]
    for name in (r["alert"] for r in promql.rules() if "alert" in r):
        assert f"| `{name}`" in ops, f"README Operations has no row for {name}"
