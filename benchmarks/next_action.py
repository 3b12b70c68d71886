"""Next action type on the Taobao UserBehavior slice (Alibaba Tianchi): temporal split, the GRU
against the class base rate and a Markov chain over (action, time-gap bucket), all scored on the
same held-out positions (events at or after the 80% time quantile that have a next event).

    python -m benchmarks.next_action --json benchmarks/results/next_action.json

The split is 60/20/20 by time (train before the 60% quantile, validate to 80%, test after). The
minority classes are small (a few percent of ~4,000 positions under the earlier 70/15/15), and
macro-F1 weighs each of them equally: the larger validation part fits the decision rule on
~50% more positions, the larger test part narrows the bootstrap interval. Every method sees the
same split. The 70/85 split is run as well (`compare_split` in the JSON), so the effect of the
choice is on record.

Macro-F1 needs a decision rule. Plain argmax answers "view" for nearly every event of a log
that is 90% views, so it is reported, but it says nothing. The goal is judged on each method's
own best rule found without the test data: argmax w(c) p(c), with class weights w fitted to
maximise macro-F1 on the validation positions (`models.metrics.fit_decision_weights`). The
prior-corrected argmax p(c)/prior(c) is reported too; it rewards coarse probabilities (a
36-cell Markov table crosses the 1/prior thresholds rarely, a per-user model often).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from models.actions import ACTIONS
from models.datasets import read_taobao
from models.evaluate import predict
from models.gru import GRUConfig
from models.metrics import fit_decision_weights, log_loss, macro_f1, multiclass_report
from models.recipes import train_on_events
from models.train import TrainConfig, pick_device

from .baselines import action_markov, position_features
from .common import DEFAULT_DATA, benchmark_args, environment, stderr_progress, write_json


def evaluate_split(events: list, args: argparse.Namespace, train_q: float, valid_q: float,
                   seed: int = 0) -> dict:
    """Train the GRU on one temporal split and score it and the baselines on its test positions."""
    cfg = GRUConfig(n_items=0, n_categories=0, emb_dim=args.hidden, hidden=args.hidden,
                    churn_horizon_s=1800.0, item_buckets=256, category_buckets=64, repeat_flag=True,
                    gap_buckets=True, dropout=args.dropout, window_attention=args.window_readout,
                    last_item_readout=args.window_readout)
    # the item head shares the GRU but the goal here is the action head: weight it up, and
    # early-stop on the action loss
    tcfg = TrainConfig(epochs=args.epochs, lr=1e-3, w_item=0.05, w_action=1.0, w_churn=0.0,
                       weight_decay=args.weight_decay,
                       batch_tokens=2048, patience=4, select_on="action", seed=seed)
    tr = train_on_events(events, cfg, tcfg, device=args.device, min_item_count=args.min_item_count,
                         progress=stderr_progress, train_q=train_q, valid_q=valid_q)
    data, split = tr.data, tr.split
    f = position_features(data)
    train_pos = (data.ts < split["train_before_ts"]) & (f["next_action"] >= 0)
    train_pos &= np.roll(data.ts, -1) < split["train_before_ts"]
    test_at = tr.test.action_at  # exactly the GRU's scored positions
    y = f["next_action"][test_at]
    assert np.array_equal(y, tr.test.action_labels)
    counts = np.bincount(f["next_action"][train_pos], minlength=len(ACTIONS)).astype(float)
    prior = counts / counts.sum()  # training class rates (0 for classes never seen)
    base = (counts + 1.0) / (counts + 1.0).sum()  # the base-rate model, add-one smoothed
    markov = action_markov(f["action"][train_pos], f["bucket"][train_pos],
                           f["next_action"][train_pos])
    # validation positions (labels observed before the test cut) to tune each decision rule on
    c1, c2 = split["train_before_ts"], split["valid_before_ts"]
    val = predict(tr.model, data, c1, len(tr.items), pick_device(args.device))
    keep = (data.ts[val.action_at] < c2) & (data.ts[np.minimum(val.action_at + 1, len(data.ts) - 1)] < c2)
    val_at, y_val = val.action_at[keep], val.action_labels[keep]
    probs = {  # (validation, test) probabilities per method
        "base_rate": (np.tile(base, (len(y_val), 1)), np.tile(base, (len(y), 1))),
        "markov_action_gap": (markov[f["action"][val_at], f["bucket"][val_at]],
                              markov[f["action"][test_at], f["bucket"][test_at]]),
        "clickstream-gru": (val.action_probs[keep], tr.test.action_probs),
    }
    weights = {name: fit_decision_weights(p_val, y_val) for name, (p_val, _) in probs.items()}
    results = {name: multiclass_report(p_test, y, prior=prior, weights=weights[name])
               for name, (_, p_test) in probs.items()}
    g, b, m = results["clickstream-gru"], results["base_rate"], results["markov_action_gap"]
    margins = {f"vs_{name}": {"log_loss": other["log_loss"] - g["log_loss"],
                              "macro_f1": g["macro_f1_validation_tuned"] - other["macro_f1_validation_tuned"],
                              "macro_f1_prior_corrected": (g["macro_f1_prior_corrected"]
                                                           - other["macro_f1_prior_corrected"]),
                              "macro_f1_argmax": g["macro_f1"] - other["macro_f1"]}
               for name, other in (("base_rate", b), ("markov_action_gap", m))}
    # paired bootstrap over test positions: how far the margins over Markov are from noise
    rng = np.random.default_rng(0)
    p_g, p_m = probs["clickstream-gru"][1], probs["markov_action_gap"][1]
    f1_diffs, ll_diffs = [], []
    for _ in range(500):
        i = rng.integers(0, len(y), len(y))
        f1_diffs.append(macro_f1(p_g[i], y[i], weights=weights["clickstream-gru"])
                        - macro_f1(p_m[i], y[i], weights=weights["markov_action_gap"]))
        ll_diffs.append(log_loss(p_m[i], y[i]) - log_loss(p_g[i], y[i]))
    vs_m = margins["vs_markov_action_gap"]
    vs_m["macro_f1_ci95"] = [float(np.percentile(f1_diffs, 2.5)), float(np.percentile(f1_diffs, 97.5))]
    vs_m["log_loss_ci95"] = [float(np.percentile(ll_diffs, 2.5)), float(np.percentile(ll_diffs, 97.5))]
    beats = all(v["log_loss"] > 0 and v["macro_f1"] > 0 for v in margins.values())
    return {"split": {**split, "train_q": train_q, "valid_q": valid_q},
            "test_positions": int(len(y)), "validation_positions": int(len(y_val)),
            "label_distribution": {a: float(np.mean(y == i)) for i, a in enumerate(ACTIONS)},
            "validation_label_distribution": {a: float(np.mean(y_val == i)) for i, a in enumerate(ACTIONS)},
            "decision_weights": {k: w.tolist() for k, w in weights.items()},
            "model_config": tr.model.cfg.to_dict(), "training": tr.report, "results": results,
            "margins_gru_minus_baseline": margins,
            "goal": {"beats_both_on_log_loss_and_macro_f1": beats,
                     "macro_f1_ci95_above_zero_vs_markov": vs_m["macro_f1_ci95"][0] > 0}}


def main(argv: list[str] | None = None) -> None:
    ap = benchmark_args(__doc__, "next_action")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA / "taobao_slice")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--dropout", type=float, default=0.5)  # the GRU overfits this 2-hour slice
    ap.add_argument("--weight-decay", type=float, default=1e-5)
    # items seen fewer times in training share hash buckets: per-item embeddings of rare items
    # memorise this small slice (validation action loss: min count 2 -> 0.3912, 5 -> 0.3856,
    # 20 -> 0.3842)
    ap.add_argument("--min-item-count", type=int, default=20)
    # time quantiles: train before the first, validate up to the second, test after it
    ap.add_argument("--train-q", type=float, default=0.60)
    ap.add_argument("--valid-q", type=float, default=0.80)
    # also run this split, for comparison (the earlier 70/85 default); "none" to skip
    ap.add_argument("--compare-split", default="0.70,0.85")
    # the margin over Markov is a few thousandths of macro-F1: the same split is trained again
    # with these seeds, and the goal counts as met only when it holds for every one of them
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--window-readout", action=argparse.BooleanOptionalAction, default=False,
                    help="the next-item readout of `stream-app train --window-readout` (it feeds the "
                         "item head only; the action head shares the GRU it trains)")
    args = ap.parse_args(argv)
    t0 = time.time()
    env = environment(str(pick_device(args.device)))
    events = read_taobao(args.data / "UserBehavior.csv")
    if args.quick:
        events, args.epochs, args.hidden, args.compare_split = events[:30000], 1, 32, "none"
    seeds = [int(s) for s in args.seeds.split(",")] if not args.quick else [0]
    main_run = evaluate_split(events, args, args.train_q, args.valid_q, seed=seeds[0])
    out = {"benchmark": "next_action", "dataset": "Taobao UserBehavior slice (Alibaba Tianchi)",
           "environment": env, "quick": args.quick, **main_run}
    per_seed = {seeds[0]: main_run}
    for seed in seeds[1:]:
        per_seed[seed] = evaluate_split(events, args, args.train_q, args.valid_q, seed=seed)
    out["seeds"] = {str(seed): {"goal": r["goal"],
                                "margins_vs_markov": r["margins_gru_minus_baseline"]["vs_markov_action_gap"],
                                "epochs_run": r["training"]["epochs_run"]}
                    for seed, r in per_seed.items()}
    out["goal"] = {**main_run["goal"],
                   "every_seed": all(all(r["goal"].values()) for r in per_seed.values()),
                   "seeds": seeds}
    if args.compare_split != "none":
        q1, q2 = (float(q) for q in args.compare_split.split(","))
        other = evaluate_split(events, args, q1, q2)
        out["compare_split"] = {k: other[k] for k in ("split", "test_positions", "validation_positions",
                                                      "decision_weights", "results",
                                                      "margins_gru_minus_baseline", "goal")}
        out["compare_split"]["epochs_run"] = other["training"]["epochs_run"]
    out["seconds"] = time.time() - t0
    write_json(args.json, out)
    print({k: {m: round(v, 4) for m, v in r.items()} for k, r in main_run["results"].items()})
    print("margins vs Markov:", main_run["margins_gru_minus_baseline"]["vs_markov_action_gap"])
    print("goal met:", main_run["goal"])


if __name__ == "__main__":
    main()
