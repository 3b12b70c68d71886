"""What `stream-app demo` shows, as pure functions: /metrics text -> figures -> a rich renderable
(or one compact line when the output is not a terminal).

Inputs are the worker's and the retrain worker's Prometheus expositions (parsed with
prometheus_client's own parser), the retrain worker's /health `last_cycle`, and the predictions
the demo reads from the output topics. Rates and latency quantiles are taken over a recent window
(the difference between two scrapes), not since the start. Nothing here does I/O.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

Labels = frozenset[tuple[str, str]]
WINDOW_S = 10.0  # rates and latency quantiles over about this much recent time
VERSIONS_SHOWN = 4  # online accuracy rows: the newest versions (names sort by creation time)


def samples(text: str) -> dict[tuple[str, Labels], float]:
    """Every sample of a Prometheus exposition: (sample name, labels) -> value."""
    out: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _by(smp: Mapping[tuple[str, Labels], float], name: str, label: str,
        **where: str) -> dict[str, float]:
    """label value -> sum of `name`'s samples with that label (and matching `where`)."""
    out: dict[str, float] = {}
    for (n, labels), v in smp.items():
        d = dict(labels)
        if n == name and label in d and all(d.get(k) == w for k, w in where.items()):
            out[d[label]] = out.get(d[label], 0.0) + v
    return out


def _total(smp: Mapping[tuple[str, Labels], float], name: str) -> float:
    return sum(v for (n, _), v in smp.items() if n == name)


@dataclass(frozen=True)
class OnlineFigures:
    """Online evaluation counters of one model version (predictions judged by what came next)."""

    action_scored: float = 0.0
    action_correct: float = 0.0
    item_scored: float = 0.0
    item_hits: float = 0.0
    item_rr: float = 0.0

    @property
    def action_accuracy(self) -> float | None:
        return self.action_correct / self.action_scored if self.action_scored else None

    @property
    def item_hit_rate(self) -> float | None:
        return self.item_hits / self.item_scored if self.item_scored else None

    @property
    def item_mrr(self) -> float | None:
        return self.item_rr / self.item_scored if self.item_scored else None


@dataclass(frozen=True)
class WorkerFigures:
    """One scrape of the stream worker's /metrics."""

    t: float
    events: float  # input messages handled, every outcome
    predictions: float  # messages acknowledged on the two prediction topics
    latency_buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count), sorted
    latency_count: float
    dead_letters: dict[str, float]  # reason -> count
    model_version: str | None
    device: str | None
    online: dict[str, OnlineFigures]  # model version -> counters


def parse_worker(text: str, t: float) -> WorkerFigures:
    smp = samples(text)
    buckets = sorted((float(le), v) for le, v in
                     _by(smp, "clickstream_event_to_prediction_seconds_bucket", "le").items())
    info = [dict(labels) for (n, labels), v in smp.items() if n == "clickstream_model_info" and v]
    produced = _by(smp, "clickstream_messages_produced_total", "topic")
    online: dict[str, OnlineFigures] = {}
    scored_action = _by(smp, "clickstream_online_scored_total", "model_version", kind="action")
    scored_item = _by(smp, "clickstream_online_scored_total", "model_version", kind="item")
    correct = _by(smp, "clickstream_online_action_correct_total", "model_version")
    hits = _by(smp, "clickstream_online_item_hits_total", "model_version")
    rr = _by(smp, "clickstream_online_item_reciprocal_rank_total", "model_version")
    for v in sorted(set(scored_action) | set(scored_item)):
        online[v] = OnlineFigures(scored_action.get(v, 0.0), correct.get(v, 0.0),
                                  scored_item.get(v, 0.0), hits.get(v, 0.0), rr.get(v, 0.0))
    return WorkerFigures(
        t=t, events=_total(smp, "clickstream_events_consumed_total"),
        predictions=sum(v for k, v in produced.items() if "predictions" in k),
        latency_buckets=tuple(buckets),
        latency_count=_total(smp, "clickstream_event_to_prediction_seconds_count"),
        dead_letters={k: v for k, v in _by(smp, "clickstream_events_rejected_total", "reason").items() if v},
        model_version=info[0].get("version") if info else None,
        device=info[0].get("device") if info else None,
        online=online)


@dataclass(frozen=True)
class RetrainFigures:
    """One scrape of the retrain worker's /metrics (+ its /health's last cycle, when read)."""

    cycles: dict[str, float]  # outcome -> count
    last_run: float | None
    duration_s: float | None
    eval: dict[tuple[str, str], float]  # (champion|challenger, metric) -> value
    last_cycle: dict[str, Any] | None = None


def parse_retrain(text: str, last_cycle: Mapping[str, Any] | None = None) -> RetrainFigures:
    smp = samples(text)
    ev: dict[tuple[str, str], float] = {}
    for (n, labels), v in smp.items():
        d = dict(labels)
        if n == "clickstream_retrain_eval":
            ev[(d.get("model", "?"), d.get("metric", "?"))] = v
    last = smp.get(("clickstream_retrain_last_run_timestamp_seconds", frozenset()))
    dur = smp.get(("clickstream_retrain_duration_seconds", frozenset()))
    return RetrainFigures(cycles=_by(smp, "clickstream_retrain_cycles_total", "outcome"),
                          last_run=last or None, duration_s=dur if last else None, eval=ev,
                          last_cycle=dict(last_cycle) if last_cycle else None)


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) buckets: linear
    within the bucket that holds the q-th observation; None without observations. A quantile in
    the +Inf bucket answers the highest finite bound."""
    bs = sorted(buckets)
    if not bs or bs[-1][1] <= 0:
        return None
    rank = q * bs[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in bs:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def _delta_buckets(cur: WorkerFigures, old: WorkerFigures | None) -> tuple[tuple[float, float], ...]:
    if old is None:
        return cur.latency_buckets
    before = dict(old.latency_buckets)
    return tuple((b, c - before.get(b, 0.0)) for b, c in cur.latency_buckets)


@dataclass(frozen=True)
class LatestPrediction:
    user_id: str
    after: str  # the action the prediction followed
    next_action: str
    p: float
    top_items: tuple[str, ...]
    model_version: str
    churn: float | None = None


@dataclass(frozen=True)
class Frame:
    """Everything one screen (or one line) shows."""

    t: float
    events_per_s: float | None
    predictions_per_s: float | None
    events_total: float
    p50_s: float | None
    p99_s: float | None
    latency_window: str  # "last 10 s" or "since start"
    model_version: str | None
    device: str | None
    online: dict[str, OnlineFigures]
    dead_letters: dict[str, float]
    retrain: RetrainFigures | None
    latest: tuple[LatestPrediction, ...]
    happenings: tuple[str, ...]  # newest last
    header: str = ""


@dataclass
class DemoState:
    """What the demo has seen so far: recent scrapes, the latest prediction per user, and the
    things that happened (retrain cycles ending, the model in service changing)."""

    users_shown: int = 6
    history: deque[WorkerFigures] = field(default_factory=lambda: deque(maxlen=120))
    latest: OrderedDict[str, LatestPrediction] = field(default_factory=OrderedDict)
    churn: OrderedDict[str, float] = field(default_factory=OrderedDict)
    happenings: deque[str] = field(default_factory=lambda: deque(maxlen=6))
    retrain: RetrainFigures | None = None
    noted: int = 0  # happenings so far (the deque keeps the newest)
    _seen_cycles: float | None = None
    _version: str | None = None

    def note(self, t: float, text: str) -> None:
        self.happenings.append(f"{time.strftime('%H:%M:%S', time.localtime(t))} {text}")
        self.noted += 1

    def add_worker(self, figures: WorkerFigures) -> None:
        if figures.model_version and figures.model_version != self._version:
            if self._version is None:
                self.note(figures.t, f"model {figures.model_version} in service on {figures.device}")
            else:
                self.note(figures.t, f"model in service: {self._version} -> {figures.model_version}")
            self._version = figures.model_version
        self.history.append(figures)

    def add_retrain(self, figures: RetrainFigures, t: float) -> None:
        n = sum(figures.cycles.values())
        if n > (self._seen_cycles or 0):  # the retrain worker's counters start at 0 with the demo
            last = figures.last_cycle or {}
            outcome = last.get("outcome") or "ended"
            detail = f" {last['version']}" if last.get("version") else ""
            reason = f": {str(last['reason'])[:140]}" if last.get("reason") else ""
            took = f" ({figures.duration_s:.0f} s)" if figures.duration_s else ""
            self.note(t, f"retrain cycle {outcome}{detail}{took}{reason}")
        self._seen_cycles = n
        self.retrain = figures

    def add_prediction(self, p: LatestPrediction) -> None:
        self.latest.pop(p.user_id, None)
        self.latest[p.user_id] = p
        while len(self.latest) > 64:
            self.latest.popitem(last=False)

    def add_churn(self, user_id: str, churn: float) -> None:
        """The latest churn probability of a user (it arrives on its own topic, before or after
        the next-action prediction of the same event)."""
        self.churn.pop(user_id, None)
        self.churn[user_id] = churn
        while len(self.churn) > 256:
            self.churn.popitem(last=False)

    def frame(self, t: float, header: str = "") -> Frame:
        cur = self.history[-1] if self.history else None
        old = None
        for f in self.history:  # the newest scrape at least WINDOW_S older than the current one
            if cur is not None and cur.t - f.t >= WINDOW_S:
                old = f
        if old is None and len(self.history) > 1:
            old = self.history[0]
        eps = pps = None
        if cur is not None and old is not None and cur.t > old.t:
            eps = (cur.events - old.events) / (cur.t - old.t)
            pps = (cur.predictions - old.predictions) / (cur.t - old.t)
        buckets: tuple[tuple[float, float], ...] = ()
        window = "since start"
        if cur is not None:
            recent = _delta_buckets(cur, old)
            if old is not None and recent and recent[-1][1] > 0:
                buckets, window = recent, f"last {cur.t - old.t:.0f} s"
            else:
                buckets = cur.latency_buckets
        return Frame(
            t=t, events_per_s=eps, predictions_per_s=pps, events_total=cur.events if cur else 0.0,
            p50_s=histogram_quantile(0.5, buckets), p99_s=histogram_quantile(0.99, buckets),
            latency_window=window, model_version=cur.model_version if cur else None,
            device=cur.device if cur else None, online=dict(cur.online) if cur else {},
            dead_letters=dict(cur.dead_letters) if cur else {}, retrain=self.retrain,
            latest=tuple(replace(p, churn=self.churn.get(p.user_id, p.churn)) for p in
                         reversed(list(self.latest.values())[-self.users_shown:])),
            happenings=tuple(self.happenings), header=header)


def prediction_from_json(d: Mapping[str, Any]) -> LatestPrediction:
    """A next-action prediction message (schema_version 1) as the view keeps it."""
    probs: Mapping[str, float] = d["action_probs"]
    best = max(probs, key=lambda k: probs[k])
    return LatestPrediction(str(d["user_id"]), str(d.get("action", "?")), best, float(probs[best]),
                            tuple(str(x["item_id"]) for x in d.get("top_items", [])[:3]),
                            str(d.get("model_version", "?")))


# --- rendering -------------------------------------------------------------------------------

def _ms(s: float | None) -> str:
    return "-" if s is None else f"{1000 * s:,.0f} ms"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f}/s"


def _newest(online: Mapping[str, OnlineFigures], in_service: str | None,
            n: int = VERSIONS_SHOWN) -> list[str]:
    """The `n` newest versions with online figures (the one in service always among them)."""
    vs = sorted(online)[-n:]
    if in_service is not None and in_service in online and in_service not in vs:
        vs = sorted([*vs[1:], in_service])
    return vs


def render(f: Frame) -> RenderableType:
    """The live view: one rich renderable."""
    top = Table.grid(padding=(0, 3))
    for _ in range(4):
        top.add_column()
    top.add_row(Text("events", style="bold"), _rate(f.events_per_s),
                Text("event -> prediction", style="bold"),
                f"p50 {_ms(f.p50_s)}  p99 {_ms(f.p99_s)}  ({f.latency_window})")
    top.add_row(Text("predictions", style="bold"), _rate(f.predictions_per_s),
                Text("model in service", style="bold"),
                f"{f.model_version or '-'} on {f.device or '-'}")
    top.add_row(Text("handled", style="bold"), f"{f.events_total:,.0f}",
                Text("dead letters", style="bold"),
                ", ".join(f"{r} {n:,.0f}" for r, n in sorted(f.dead_letters.items())) or "none")

    acc = Table(title="online accuracy by model version (judged by what each user did next)",
                title_justify="left", expand=True)
    for col in ("version", "action accuracy", "item hit rate (top-K)", "item MRR", "judged"):
        acc.add_column(col, justify="left" if col == "version" else "right")
    versions = _newest(f.online, f.model_version)
    for v in versions:
        o = f.online[v]
        mark = " (in service)" if v == f.model_version else ""
        acc.add_row(v + mark, _pct(o.action_accuracy), _pct(o.item_hit_rate),
                    "-" if o.item_mrr is None else f"{o.item_mrr:.3f}", f"{o.action_scored:,.0f}")
    if len(f.online) > len(versions):
        older = len(f.online) - len(versions)
        acc.add_row(f"({older} older version{'s' if older > 1 else ''})", "", "", "", "")
    if not f.online:
        acc.add_row("-", "-", "-", "-", "0")

    preds = Table(title="latest predictions (newest first)", title_justify="left", expand=True)
    for col in ("user", "after", "next action", "p", "top items", "p(churn)", "model"):
        preds.add_column(col, justify="right" if col in ("p", "p(churn)") else "left",
                         overflow="ellipsis", no_wrap=True)
    for p in f.latest:
        preds.add_row(p.user_id, p.after, p.next_action, f"{p.p:.2f}", ", ".join(p.top_items),
                      "-" if p.churn is None else f"{p.churn:.2f}", p.model_version)

    rt = f.retrain
    if rt is None:
        retrain_text = Text("retrain worker: no metrics yet")
    else:
        cyc = ", ".join(f"{k} {rt.cycles.get(k, 0):.0f}" for k in ("promoted", "rejected", "failed"))
        last = ""
        if rt.last_run:
            ago = max(f.t - rt.last_run, 0)
            outcome = (rt.last_cycle or {}).get("outcome", "")
            last = f"; last cycle {outcome} {ago:.0f} s ago, took {rt.duration_s or 0:.0f} s"
        ev = ""
        if rt.eval:
            parts = []
            for m in ("champion", "challenger"):
                h = rt.eval.get((m, "item_hit_at_20"))
                if h is not None:
                    parts.append(f"{m} hit@20 {h:.3f}")
            ev = ("; judged " + ", ".join(parts)) if parts else ""
        retrain_text = Text(f"retrain cycles: {cyc}{last}{ev}")
    happen = Text("\n".join(f.happenings) if f.happenings else "nothing yet", style="cyan")
    return Panel(Group(top, Text(""), acc, preds, retrain_text, Panel(happen, title="happenings",
                                                                       title_align="left")),
                 title=f.header or "clickstream-gru demo", title_align="left",
                 subtitle="Ctrl-C stops everything", subtitle_align="right")


def line(f: Frame) -> str:
    """The same figures as one compact line (output that is not a terminal)."""
    online = " ".join(f"{v}: action {_pct(f.online[v].action_accuracy)} "
                      f"item {_pct(f.online[v].item_hit_rate)}"
                      for v in _newest(f.online, f.model_version, 2)) or "-"
    dead = ",".join(f"{r}={n:.0f}" for r, n in sorted(f.dead_letters.items())) or "0"
    rt = f.retrain
    cycles = ("-" if rt is None else
              "/".join(f"{rt.cycles.get(k, 0):.0f}" for k in ("promoted", "rejected", "failed")))
    return (f"{time.strftime('%H:%M:%S', time.localtime(f.t))} events {_rate(f.events_per_s)} "
            f"(total {f.events_total:,.0f}) | latency p50 {_ms(f.p50_s)} p99 {_ms(f.p99_s)} | "
            f"model {f.model_version or '-'} | online {online} | dead letters {dead} | "
            f"retrain promoted/rejected/failed {cycles}")
