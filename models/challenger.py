"""One retrain cycle's pure part: train a challenger on a window of events, judge it against the
champion on the freshest slice neither has trained on, and decide. No I/O (the Kafka reading,
the registry writes and the metrics live in stream_app/retrain.py).

The window (time-ordered events) is split by time as `stream-app train` splits it (same code:
models.recipes.train_on_events): train before the 70% quantile, early-stop on [70%, 85%), and
judge on the rest. The judged slice also starts after the champion's own validation part (from
its manifest), so neither model has seen a judged event. Both models run through `step()` with
their own vocabularies, every user's earlier events in the window warming the state
(models.evaluate.step_metrics), so the numbers are the stream's numbers.

The rule (`decide`): promote only when every number of both models is finite, the slice has at
least `min_predictions` scored item predictions, and the challenger beats the champion on BOTH
primary metrics (item hit@20 and MRR@20) by at least `margin` (absolute, as fractions), while
its action log loss is not worse than the champion's by more than `margin` (nats). Without a
champion, a challenger with finite numbers is promoted (that is how the first model is born).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .checkpoint import LoadedModel
from .evaluate import step_metrics
from .features import WindowLimits
from .gru import GRUConfig
from .recipes import Trained, train_on_events
from .train import TrainConfig, pick_device
from .warmstart import WarmStart

PRIMARY = ("item_hit_at_20", "item_mrr_at_20")
GUARD = "action_log_loss"  # must not get worse beyond the margin


@dataclass(frozen=True)
class Policy:
    margin: float = 0.005
    min_predictions: int = 50  # scored item predictions in the judged slice
    train_q: float = 0.70
    judge_q: float = 0.85  # the judged slice starts at this time quantile of the window


@dataclass
class Decision:
    promote: bool
    reason: str


@dataclass
class Challenge:
    decision: Decision
    champion: dict[str, float] | None  # step metrics on the judged slice (None: no champion)
    challenger: dict[str, float]
    trained: Trained
    judged_from_ts: float

    def record(self) -> dict[str, Any]:
        """What the registry's history and cycle log keep (plain JSON)."""
        return {"champion": self.champion, "challenger": self.challenger,
                "judged_from_ts": self.judged_from_ts, "split": self.trained.split,
                "training": {k: self.trained.report.get(k) for k in
                             ("epochs_run", "best_valid_loss", "train_seconds", "device",
                              "warm_start")},
                "items": len(self.trained.items)}


def _finite(m: Mapping[str, float] | None) -> bool:
    return m is None or all(math.isfinite(float(v)) for v in m.values())


def decide(champion: Mapping[str, float] | None, challenger: Mapping[str, float],
           policy: Policy) -> Decision:
    n = int(challenger.get("n_item", 0))
    if n < policy.min_predictions:
        return Decision(False, f"too few fresh item predictions to judge ({n} < "
                               f"{policy.min_predictions})")
    if not _finite(challenger) or not _finite(champion):
        bad = [f"{who}.{k}" for who, m in (("challenger", challenger), ("champion", champion or {}))
               for k, v in m.items() if not math.isfinite(float(v))]
        return Decision(False, "non-finite metrics: " + ", ".join(bad))
    if champion is None:
        return Decision(True, "no champion: first model, finite metrics")
    gains = {k: challenger[k] - champion[k] for k in PRIMARY}
    worse = challenger[GUARD] - champion[GUARD]
    summary = (", ".join(f"{k} {champion[k]:.4f} -> {challenger[k]:.4f}" for k in PRIMARY)
               + f", {GUARD} {champion[GUARD]:.4f} -> {challenger[GUARD]:.4f}")
    short = [k for k, g in gains.items() if g < policy.margin]
    if short:
        return Decision(False, f"not better by the margin {policy.margin} on {', '.join(short)}: "
                               + summary)
    if worse > policy.margin:
        return Decision(False, f"{GUARD} worse by {worse:.4f} > margin {policy.margin}: " + summary)
    return Decision(True, "better on " + summary)


def challenge(events: Sequence[Mapping[str, Any]], champion: LoadedModel | None, cfg: GRUConfig,
              tcfg: TrainConfig, policy: Policy, device: str = "auto",
              progress: Callable[[dict[str, Any]], None] | None = None,
              limits: WindowLimits | None = None) -> Challenge:
    """Train a challenger on `events` (time-ordered schema-v1 dicts), warm-started from the
    champion when there is one (`cfg` is then ignored), judge both, decide. `limits`: the
    workers' window (models.features); training and judging both apply it as they do."""
    dev = pick_device(device)
    warm = (WarmStart(champion.model.to("cpu"), champion.items, champion.categories)
            if champion is not None else None)
    trained = train_on_events(events, cfg, tcfg, device=str(dev), progress=progress,
                              train_q=policy.train_q, valid_q=policy.judge_q, warm=warm,
                              limits=limits)
    judged_from = trained.split["valid_before_ts"]
    if champion is not None:
        seen_until = champion.manifest.get("data", {}).get("split", {}).get("valid_before_ts")
        if seen_until is not None:
            judged_from = max(judged_from, float(seen_until))
    challenger = step_metrics(trained.model, trained.items, trained.categories, events,
                              judged_from, device=dev, limits=trained.data.limits)
    if not all(bool(torch.isfinite(t).all()) for t in trained.model.state_dict().values()
               if t.is_floating_point()):
        challenger["non_finite_weights"] = math.inf
    champ = (step_metrics(champion.model, champion.items, champion.categories, events,
                          judged_from, device=dev, limits=trained.data.limits)
             if champion is not None else None)
    return Challenge(decide(champ, challenger, policy), champ, challenger, trained, judged_from)
