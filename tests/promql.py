"""Metric names in PromQL expressions, and the names the code declares: for the tests that check
deploy/prometheus and deploy/grafana against stream_app (no Prometheus needed)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from stream_app.instruments import Metrics

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
            "bool", "offset", "inf", "nan"}
# series Prometheus makes itself for every target
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def metric_names(expr: str) -> set[str]:
    """Every metric (or recording rule) name a PromQL expression selects."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range and subquery brackets
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)  # label lists
    s = re.sub(r"\$\w+|\$\{[^}]*\}", " ", s)  # Grafana variables ($__rate_interval)
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", s):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in KEYWORDS or re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def recorded_names() -> set[str]:
    return {r["record"] for r in rules() if "record" in r}


def worker_exported_names() -> set[str]:
    """Sample names a stream worker's /metrics page carries (a fresh Metrics registry)."""
    reg = CollectorRegistry()
    Metrics(reg)
    return _family_names(reg)


def _family_names(reg: CollectorRegistry) -> set[str]:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    # from the families, not their samples: a labelled metric has no sample before its first use
    return {fam.name + suffix for fam in reg.collect() for suffix in suffixes[fam.type]}


def retrain_exported_names() -> set[str]:
    """Sample names the retrain worker's /metrics page carries."""
    from stream_app.retrain import RetrainMetrics

    reg = CollectorRegistry()
    RetrainMetrics(reg)
    return _family_names(reg)


def known_names() -> set[str]:
    """Names a query may select: exported by a stream worker or the retrain worker, made by
    Prometheus itself, or recorded by rules.yml."""
    return worker_exported_names() | retrain_exported_names() | SYNTHETIC | recorded_names()


def declared_names() -> set[str]:
    """Metric names written as string literals anywhere in stream_app/ (a metric declared in code,
    though not necessarily exported by a stream worker: the retrain worker's, for instance)."""
    found: set[str] = set()
    for path in (ROOT / "stream_app").rglob("*.py"):
        found |= set(re.findall(r"[\"'](clickstream_[a-z0-9_]+)[\"']", path.read_text()))
    # a histogram declared as NAME is queried as NAME_bucket/_sum/_count
    return found | {f"{n}{s}" for n in found for s in ("_bucket", "_sum", "_count")}
