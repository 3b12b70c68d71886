"""Rewrite the README's results section from benchmarks/results/*.json (never by hand).

    python -m benchmarks.report            # rewrites README.md between the RESULTS markers
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .common import ROOT

RESULTS = ROOT / "benchmarks" / "results"
BEGIN, END = "<!-- RESULTS:BEGIN (python -m benchmarks.report) -->", "<!-- RESULTS:END -->"


def _load(name: str) -> dict[str, Any] | None:
    f = RESULTS / name
    return json.loads(f.read_text()) if f.exists() else None


def _env(d: dict[str, Any]) -> str:
    e = d["environment"]
    cpu = f"CPU ({e.get('cpu_count')} cores, {e.get('torch_threads')} threads)"
    on_gpu = e.get("gpu") and e.get("device", "cuda") == "cuda"
    dev = e["gpu"] if on_gpu else cpu + (f" of a machine with an {e['gpu']}" if e.get("gpu") else "")
    sha = e["git_sha"][:10] + (" with uncommitted changes" if e["git_sha"].endswith("-dirty") else "")
    return f"`{Path(d.get('_file', '')).name}` · git {sha} · {dev} · torch {e['torch']}"


# model and training arguments whose default an ablation run may predate (not its budget; not
# valid_passes either: those passes come after the validation figures an ablation row reports)
DEFAULTS_SHOWN = ("negatives", "negatives_from", "cosine", "scale", "attention", "last_item", "repeat",
                  "gate_stats", "calibrate_gate", "transitions", "transition_reach",
                  "transition_backward", "transition_decay", "transition_recency",
                  "recent_fraction", "recent_lr", "emb", "hidden",
                  "dropout", "lr", "lr_decay", "weight_decay", "batch_tokens")


def next_item(d: dict[str, Any]) -> list[str]:
    r, pub = d["results"], d["published"]
    gru, t = r["clickstream-gru"], d["training"]
    lines = [f"**Next item, Diginetica** (SR-GNN split, all {d['model_config']['n_items']:,} items ranked, "
             f"{d['test_rows']:,} test rows fed through `step()` one event at a time). "
             f"Trained {t['epochs_run']} epochs in {t['train_seconds'] / 60:.0f} min on {t['device']}. "
             f"Goal P@20 ≥ {d['goal']['P@20']} and MRR@20 ≥ {d['goal']['MRR@20']}: "
             f"**{'met' if d['goal']['met'] else 'not met'}**.",
             "", "| method | P@20 | MRR@20 | source |", "|---|---|---|---|"]
    for name in ("clickstream-gru", "Markov", "S-POP", "POP"):
        lines.append(f"| {name} | {r[name]['P@20']:.2f} | {r[name]['MRR@20']:.2f} | measured here |")
    for name, v in pub.items():
        lines.append(f"| {name} | {v['P@20']:.2f} | {v['MRR@20']:.2f} | published |")
    lines += ["", f"<sub>{_env(d)}</sub>", ""]
    split = gru.get("by_target")
    if split:
        seen, new = split["target_in_prefix"], split["target_new"]
        lines += [f"By target: the {seen['rows']:,} rows whose next item is already in the prefix "
                  f"{seen['P@20']:.2f} / {seen['MRR@20']:.2f} (Markov "
                  f"{r['Markov']['by_target']['target_in_prefix']['P@20']:.2f} / "
                  f"{r['Markov']['by_target']['target_in_prefix']['MRR@20']:.2f}); the {new['rows']:,} "
                  f"with a new item {new['P@20']:.2f} / {new['MRR@20']:.2f} (Markov "
                  f"{r['Markov']['by_target']['target_new']['P@20']:.2f} / "
                  f"{r['Markov']['by_target']['target_new']['MRR@20']:.2f}).", ""]
    rp = t.get("recent_pass")
    if rp:
        lines += [f"Recency pass: after early stopping, one more pass over the newest "
                  f"{rp['rows']:,} training sessions ({d['arguments']['recent_fraction']:.0%}) at "
                  f"learning rate {rp['lr']:g}; validation loss {rp['valid_before']['item']:.4f} "
                  f"before, {rp['valid_after']['item']:.4f} after.", ""]
    cal = t.get("gate_calibration")
    if cal and cal.get("by_shift"):
        at0, best = cal["by_shift"]["0.0"], cal["by_shift"][str(cal["shift"])]
        lines += [f"Repeat gate: its logit shifted by {cal['shift']:+.1f} after training, the shift with "
                  f"the best validation MRR@20 under the full distribution ({at0['P@20']:.2f} / "
                  f"{at0['MRR@20']:.2f} as trained, {best['P@20']:.2f} / {best['MRR@20']:.2f} "
                  f"shifted).", ""]
    tcal = t.get("transition_calibration")
    if tcal and tcal.get("by_weight"):
        at0, best = tcal["by_weight"]["0.0"], tcal["by_weight"][str(tcal["weight"])]
        a = d["arguments"]
        rows = (f"every window item's row at {a['transition_decay']}^(its distance from the newest)"
                if a.get("transition_decay") else "the newest item's row")
        recency = (f", a session weighing exp(-(sessions newer than it) / "
                   f"({a['transition_recency']} x sessions))" if a.get("transition_recency") else "")
        fit_only = gru.get("table_from_fit_part_only")
        with_table = gru.get("before_validation_passes", gru)
        rebuilt = (f" Once the weight is chosen, the table is rebuilt with the validation sessions "
                   f"counted too: test {with_table['P@20']:.2f} / "
                   f"{with_table['MRR@20']:.2f}, against {fit_only['P@20']:.2f} / "
                   f"{fit_only['MRR@20']:.2f} for the same model with the table of the training "
                   f"part only." if fit_only else "")
        lines += [f"Transition table: each item's {a['transitions']} most frequent neighbours in "
                  f"training (an item up to {a['transition_reach']} events later counts 1/distance, "
                  f"one before it {a['transition_backward']}/distance{recency}), {rows}, mixed "
                  f"into the explore distribution at weight {tcal['weight']}, the weight with the best "
                  f"validation MRR@20 ({at0['P@20']:.2f} / {at0['MRR@20']:.2f} without it, "
                  f"{best['P@20']:.2f} / {best['MRR@20']:.2f} with it).{rebuilt}", ""]
    vp = t.get("validation_passes")
    if vp and "before_validation_passes" in gru:
        before = gru["before_validation_passes"]
        lines += [f"Validation passes: once validation has chosen the epoch, the gate and the "
                  f"table's weight, {vp['passes']} passes over its {vp['rows']:,} sessions at "
                  f"learning rate {vp['lr']:g} (the table out of the loss): test "
                  f"{gru['P@20']:.2f} / {gru['MRR@20']:.2f}, against {before['P@20']:.2f} / "
                  f"{before['MRR@20']:.2f} for the same model before them.", ""]
    # the ablation run itself (next_item_ablations.json) when there is one, else the rows the main
    # run copied when it ran; then later, smaller ablation runs (next_item_ablations_*.json)
    def run(doc: dict[str, Any]) -> dict[str, Any]:
        return {"arguments": doc["arguments"], "git_sha": doc["environment"]["git_sha"],
                "rows": doc["ablations"]}

    standalone = _load("next_item_ablations.json")
    lines += _ablations(run(standalone) if standalone else d.get("ablations", {}), d)
    for f in sorted(RESULTS.glob("next_item_ablations_*.json")):
        lines += _ablations(run(json.loads(f.read_text())), d)
    return lines


def _ablations(ab: dict[str, Any], d: dict[str, Any]) -> list[str]:
    """One ablation run as a table: each row against that run's own default."""
    rows = ab.get("rows") if "rows" in ab else ab
    if not rows or len(rows) < 2:
        return []
    args = ab.get("arguments") or d["arguments"]
    base = rows["default"]
    n = args.get("train_sessions")
    budget = f"a reduced budget: {n:,} training sessions, " if n else "all training sessions, "
    sha = str(ab.get("git_sha") or d["environment"]["git_sha"])[:10]
    changed = [f"{k} {args[k]!r} (now {d['arguments'].get(k)!r})" if k in args else
               f"{k} (not an option yet; now {d['arguments'].get(k)!r})"
               for k in DEFAULTS_SHOWN if args.get(k) != d["arguments"].get(k)]
    differs = f" Their default differed from today's in: {', '.join(changed)}." if changed else ""
    lines = [f"Ablations: each row retrains the default with one part changed, at {budget}"
             f"{args['epochs']} epochs; validation P@20 / MRR@20 (the last 5% of training "
             f"sessions; git {sha}).{differs}",
             "", "| variant | valid P@20 | valid MRR@20 | Δ P@20 | Δ MRR@20 | train s |",
             "|---|---|---|---|---|---|"]
    for name, v in rows.items():
        lines.append(f"| {name} | {v['valid_P@20']:.2f} | {v['valid_MRR@20']:.2f} | "
                     f"{v['valid_P@20'] - base['valid_P@20']:+.2f} | "
                     f"{v['valid_MRR@20'] - base['valid_MRR@20']:+.2f} | {v['train_seconds']:.0f} |")
    return lines + [""]


def next_item_elsewhere(d: dict[str, Any]) -> list[str]:
    """Another shop, the same command and defaults: is the GRU ahead of S-POP and Markov?"""
    r, t, beats = d["results"], d["training"], d["beats_baselines"]
    share = d["test_target_in_prefix_share"]
    lines = [f"**Next item, another shop: {d['dataset']}** ({d['model_config']['n_items']:,} "
             f"entries ranked, {d['test_rows']:,} test rows through `step()`, "
             f"{100 * share:.1f}% of targets already in the prefix; the Diginetica defaults "
             f"unchanged, {t['epochs_run']} epochs in {t['train_seconds'] / 60:.1f} min). Ahead of "
             f"S-POP and Markov on both metrics: **{'yes' if beats['all'] else 'no'}**.",
             "", "| method | P@20 | MRR@20 | P@20 / MRR@20, target in prefix | P@20 / MRR@20, new target |",
             "|---|---|---|---|---|"]
    for name in ("clickstream-gru", "Markov", "S-POP", "POP"):
        v = r[name]
        seen, new = v["by_target"]["target_in_prefix"], v["by_target"]["target_new"]
        lines.append(f"| {name} | {v['P@20']:.2f} | {v['MRR@20']:.2f} | {seen['P@20']:.2f} / "
                     f"{seen['MRR@20']:.2f} | {new['P@20']:.2f} / {new['MRR@20']:.2f} |")
    return lines + ["", f"<sub>{_env(d)}</sub>", ""]


def next_action(d: dict[str, Any]) -> list[str]:
    r = d["results"]
    m = d["margins_gru_minus_baseline"]["vs_markov_action_gap"]
    ci = m.get("macro_f1_ci95")
    ci_text = f" (95% bootstrap interval {ci[0]:+.3f} to {ci[1]:+.3f})" if ci else ""
    g = d["goal"]
    met = g["beats_both_on_log_loss_and_macro_f1"] and g.get("macro_f1_ci95_above_zero_vs_markov", True)
    seeds = d.get("seeds", {})
    seed_text = ""
    if len(seeds) > 1:
        met = met and g.get("every_seed", False)
        seed_text = (" Training seeds " + ", ".join(seeds) + ": macro-F1 margins "
                     + ", ".join(f"{s['margins_vs_markov']['macro_f1']:+.4f} (interval "
                                 f"{s['margins_vs_markov']['macro_f1_ci95'][0]:+.3f} to "
                                 f"{s['margins_vs_markov']['macro_f1_ci95'][1]:+.3f})"
                                 for s in seeds.values()) + "; the goal needs every seed.")
    lines = [f"**Next action type, Taobao slice** (temporal split, {d['test_positions']:,} test "
             f"positions). Goal: beat both baselines on log loss and macro-F1, the macro-F1 "
             f"interval above zero: **{'met' if met else 'not met'}**. "
             f"Margins over Markov (seed {g.get('seeds', [0])[0]}): log loss {m['log_loss']:+.4f} "
             f"(positive = GRU better), macro-F1 "
             f"{m['macro_f1']:+.4f}{ci_text}.{seed_text} Macro-F1 uses each method's own decision weights "
             "fitted on the validation part "
             "(plain argmax answers \"view\" everywhere on this 90%-view log).",
             "", "| method | log loss | macro-F1 (validation-tuned) | macro-F1 (prior-corrected) | "
             "macro-F1 (argmax) | accuracy |", "|---|---|---|---|---|---|"]
    for name, v in r.items():
        vt = v.get("macro_f1_validation_tuned", float("nan"))
        pc = v.get("macro_f1_prior_corrected", float("nan"))
        lines.append(f"| {name} | {v['log_loss']:.4f} | {vt:.4f} | {pc:.4f} | {v['macro_f1']:.4f} | "
                     f"{v['accuracy']:.4f} |")
    lines += ["", f"<sub>{_env(d)}</sub>", ""]
    return lines


def churn(d: dict[str, Any]) -> list[str]:
    lines = []
    for part, title in (("simulated", "Churn, simulator with known return probabilities"),
                        ("diginetica_purchases", "Buys again within 30 days, Diginetica purchases")):
        p = d[part]
        goal = ""
        if part == "simulated":
            g = p["goal"]
            goal = (f" AUC gap to the ceiling {g['auc_gap_to_ceiling']:.3f} (goal ≤ 0.02: "
                    f"**{'met' if g['auc_within_0.02'] else 'not met'}**), ECE goal < 0.02: "
                    f"**{'met' if g['ece_below_0.02'] else 'not met'}**.")
            if "auc_gap_history_bound_to_ceiling" in g:
                goal += (f" The ceiling knows each shopper's hidden engagement; the history bound is "
                         f"the best any model that sees only events can do (the Bayes posterior under "
                         f"the simulator's own process), and it is itself "
                         f"{g['auc_gap_history_bound_to_ceiling']:.3f} AUC below the ceiling. The GRU is "
                         f"{g['auc_gap_to_history_bound']:.3f} below the bound.")
        else:
            goal = f" Winner by AUC: **{p['winner_by_auc']}**."
        lines += [f"**{title}.**{goal}", "", "| method | AUC | PR-AUC | log loss | ECE | n |",
                  "|---|---|---|---|---|---|"]
        for name, v in p["results"].items():
            lines.append(f"| {name} | {v['auc']:.4f} | {v['pr_auc']:.4f} | {v['log_loss']:.4f} | "
                         f"{v['ece']:.4f} | {v['n']:,} |")
        lines.append("")
    lines += [f"<sub>{_env(d)}</sub>", ""]
    return lines


def throughput(d: dict[str, Any]) -> list[str]:
    lines = ["**Throughput and latency, one process per mode, same broker and input** "
             f"({d['parameters']['events']:,} events, {d['parameters']['partitions']} partitions, hidden "
             f"{d['parameters']['hidden']}).", "",
             "| mode | events/s | load | p50 latency (ms) | p99 latency (ms) "
             "| p50 / p99 from idle (ms) | load asked / achieved (events/s) |",
             "|---|---|---|---|---|---|---|"]

    def ms(x: float | None) -> str:
        return f"{1000 * x:.1f}" if x is not None else "n/a"

    for name, v in d["modes"].items():
        runs = [(label, v[key]) for key, label in (("latency", "50%"), ("latency_at_90pct", "90%"))
                if key in v]
        if not runs:
            lines.append(f"| {name} | {v['events_per_s']:,.0f} | | | | | |")
        for label, lat in runs:
            idle = lat.get("from_idle")
            from_idle = f"{ms(idle['p50_s'])} / {ms(idle['p99_s'])}" if idle else "n/a"
            lines.append(f"| {name} | {v['events_per_s']:,.0f} | {label} | {ms(lat['p50_s'])} | "
                         f"{ms(lat['p99_s'])} | {from_idle} | {lat['offered_events_per_s']:,.0f} / "
                         f"{lat['achieved_offer_events_per_s']:,.0f} |")
    lead_in = d["parameters"].get("lead_in_seconds")
    window = (f"over the {d['parameters']['latency_seconds']:.0f} s that follow a {lead_in:.0f} s "
              "lead-in at the same rate (load held steady); \"from idle\" counts every event fed, "
              "the lead-in's first seconds, when the idle worker meets the load, included"
              if lead_in else "over every event fed, from the first")
    lines += ["", "Latency is measured at a share of each mode's own maximum (load), " + window +
              ". Where the single feeding process could not offer that much (raw), the achieved "
              "rate is what was measured. faust_consume writes no output per event, so it has no "
              "latency.", ""]
    stages = d["modes"].get("pipeline", {}).get("us_per_event")
    if stages:
        lines += ["**Where a pipeline event's time goes at max load** (µs of worker CPU per event; "
                  "stages timed in the worker, `faust_and_rest` = its CPU time outside them; the "
                  "changelog wait overlaps the next batch and is not CPU).", "",
                  "| " + " | ".join(stages) + " |", "|" + "---|" * len(stages),
                  "| " + " | ".join(f"{x:.1f}" for x in stages.values()) + " |", ""]
    lines += ["| goal | measured | target | met |", "|---|---|---|---|"]
    for name, g in d["goals"].items():
        v, goal = g["value"], g.get("goal")
        met = "" if goal is None else ("yes" if g.get("met") else "no")
        lines.append(f"| {name} | {v:.3f} | {goal if goal is not None else '(reference)'} | {met} |"
                     if v is not None else f"| {name} | n/a | {goal} | no |")
    lines += ["", f"<sub>{_env(d)}</sub>", ""]
    return lines


def gru_step(d: dict[str, Any]) -> list[str]:
    lines = ["**GRU engine alone** (events/s by batch size, state gathered from and scattered to a "
             "device-resident table).", "", "| device | dtype | batch | events/s |", "|---|---|---|---|"]
    for row in d["by_batch"]:
        lines.append(f"| {row['device']} | {row['dtype']} | {row['batch']:,} | {row['events_per_s']:,.0f} |")
    lines += ["", "| history length | incremental step (µs/event) | full window re-run (µs/event) |",
              "|---|---|---|"]
    for row in d["history"]:
        lines.append(f"| {row['history']} | {row['step_us']:.1f} | {row['rerun_us']:.1f} |")
    lines += ["", f"<sub>{_env(d)}</sub>", ""]
    return lines


def gru_step_cuda(d: dict[str, Any]) -> list[str]:
    """`make gpu-check`: goals, the step by batch size in each mode, and the device scoring path."""
    lines = ["**GPU checks** (`make gpu-check`: GRU step with gather/scatter from a "
             f"{d['parameters']['users_in_table']:,}-user table on the device; the scoring path on the "
             "device against CPU).", "", "| goal | measured | target | met |", "|---|---|---|---|"]
    for g in d["goals"]:
        v = g["measured"]
        shown = f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
        lines.append(f"| {g['what']} | {shown} {g['unit']} | {g['target']} | {'yes' if g['met'] else 'no'} |")
    modes = [m for m in ("eager", "cuda_graph", "compiled_graph")
             if any(r["mode"] == m for r in d["by_batch"])]
    cols = [(dt, mode) for dt in ("float32", "bfloat16") for mode in modes]
    cell = {(r["dtype"], r["mode"], r["batch"]): r for r in d["by_batch"]}
    lines += ["", "| batch | " + " | ".join(f"{dt} {mode} (events/s · µs/step)" for dt, mode in cols) + " |",
              "|---|" + "---|" * len(cols)]
    for b in d["parameters"]["batches"]:
        row = [cell.get((dt, mode, b)) for dt, mode in cols]
        lines.append(f"| {b:,} | " + " | ".join(
            f"{r['events_per_s']:,.0f} · {1e6 * r['seconds_per_step']:,.0f}" if r and "error" not in r
            else ("failed" if r else "n/a") for r in row) + " |")
    sc = d["scoring"]
    lines += ["", f"Scoring path (`score_batch`, {sc['users']:,} users, "
              f"batches of {sc['device_run']['batch']}): "
              f"{sc['device_run']['events_per_s']:,.0f} events/s on {sc['device_run']['device']} against "
              f"{sc['cpu_run']['events_per_s']:,.0f} on CPU; largest probability difference "
              f"{sc['max_abs_diff_vs_cpu']:.1e} over {sc['predictions_compared']:,} predictions.", "",
              f"<sub>{_env(d)}</sub>", ""]
    return lines


def next_item_cuda(d: dict[str, Any]) -> list[str]:
    r, t = d["results"]["clickstream-gru"], d["training"]
    return [f"**Next item, Diginetica, same command on the GPU**: P@20 {r['P@20']:.2f} / MRR@20 "
            f"{r['MRR@20']:.2f} (validation {r['valid_P@20']:.2f} / {r['valid_MRR@20']:.2f}), "
            f"{t['epochs_run']} epochs in {t['train_seconds']:.0f} s of training and "
            f"{r['evaluate_seconds']:.0f} s of evaluation on {t['device']}.", "", f"<sub>{_env(d)}</sub>", ""]


def throughput_by_device() -> list[str]:
    """The pipeline worker on CPU and on CUDA, each run on the GPU machine beside its own broker."""
    runs = [(name, _load(name)) for name in ("throughput_gpu_machine_cpu.json", "throughput_cuda.json")]
    runs = [(name, d) for name, d in runs if d is not None]
    if not runs:
        return []
    lines = ["**Pipeline worker on CPU and on CUDA** (`benchmarks.throughput --device cpu|cuda`, "
             "both on the lent GPU machine, each with its own broker and a Faust passthrough run "
             "beside it; that machine's cores are slower per event than the 2-core one above).", "",
             "| worker device | pipeline events/s | faust_passthrough events/s | ratio | scoring µs/event "
             "| p99 at 50% (ms) | p99 at 90% (ms) | file |", "|---|---|---|---|---|---|---|---|"]
    for name, d in runs:
        m = d["modes"]
        pipe = m["pipeline"]
        lat50, lat90 = pipe.get("latency"), pipe.get("latency_at_90pct")
        lines.append(f"| {d['parameters']['pipeline_device']} | {pipe['events_per_s']:,.0f} | "
                     f"{m['faust_passthrough']['events_per_s']:,.0f} | "
                     f"{pipe['events_per_s'] / m['faust_passthrough']['events_per_s']:.2f} | "
                     f"{pipe['us_per_event']['scoring']:.0f} | "
                     f"{1000 * lat50['p99_s'] if lat50 else float('nan'):.0f} | "
                     f"{1000 * lat90['p99_s'] if lat90 else float('nan'):.0f} | `{name}` |")
    lines.append("")
    for name, d in runs:
        lines += [f"<sub>{_env({**d, '_file': name})}</sub>", ""]
    return lines


def scaling(d: dict[str, Any]) -> list[str]:
    lines = ["**Per-event cost as tracked users grow** (state in RocksDB, hot users' hidden states "
             "cached; Zipf activity; no Kafka).", "",
             "| tracked users | µs/event | state bytes/user | cache hit ratio |", "|---|---|---|---|"]
    for r in d["by_users"]:
        lines.append(f"| {r['users']:,} | {r['us_per_event']:.1f} | {r['state_bytes_per_user_mean']:.0f} "
                     f"| {r['cache_hit_ratio']:.2f} |")
    g = d["goals"]
    lines += ["", f"Cost at the largest size / smallest: {g['flat_in_users']['value']:.2f}x (goal ≤ 1.5: "
              f"{'met' if g['flat_in_users']['met'] else 'not met'}); state per user "
              f"{g['state_bytes_per_user']['value']:.0f} B (goal ≤ 2048: "
              f"{'met' if g['state_bytes_per_user']['met'] else 'not met'}).", "",
              f"<sub>{_env(d)}</sub>", ""]
    return lines


def two_workers(d: dict[str, Any]) -> list[str]:
    one, two = d["one_worker"], d["two_workers"]
    return [f"**Two workers sharing one topic** ({d['parameters']['events']:,} events, "
            f"{d['parameters']['partitions']} partitions; {d['parameters']['machine_note']}): one worker "
            f"{one['events_per_s']:,.0f} events/s, two workers {two['events_per_s']:,.0f} events/s "
            f"({d['speedup']:.2f}x); partitions per worker: {two['partitions_by_worker']}.", "",
            f"<sub>{_env(d)}</sub>", ""]


def _recovery(rs: list[dict[str, Any]]) -> str:
    parts = []
    for r in rs:
        t = r.get("restart_to_first_prediction_s", r.get("kill_to_first_prediction_on_moved_partitions_s"))
        if t is not None:
            parts.append(f"{r['fault']} {t:.1f} s")
    return "; ".join(parts) or "-"


def reliability(d: dict[str, Any]) -> list[str]:
    p = d["parameters"]
    if set(d["results"]) == {"many_users"}:
        title = (f"**Distinct users passing through** ({p['partitions']} partitions, window and sweep "
                 f"as in the fault tests; ok: **{d['all_ok']}**).")
    else:
        title = (f"**Reliability under faults** ({p['producer']} producer, {p['events']:,} events per "
                 f"fault scenario at {p['rate_events_per_s']:.0f}/s offered, {p['partitions']} partitions, "
                 f"{p['kills']} SIGKILLs of the worker; all ok: **{d['all_ok']}**). Recovery = from "
                 "restart (or kill, for a peer) to the first new prediction.")
    lines = [title, "",
             "| scenario | events | predicted | lost | duplicated (records, both topics) | dead-lettered "
             "| recovery |",
             "|---|---|---|---|---|---|---|"]
    for name, r in d["results"].items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error'][:80]} | | | | | |")
        elif name == "many_users":
            lines.append(f"| {name} ({r['users']:,} users) | {r['events_sent']:,} | "
                         f"{r['predictions_received']:,} | {r['lost']} | - | - | peak "
                         f"{r['peak_state_bytes_per_user']:.0f} B/user, {r['peak_active_users']:,.0f} "
                         "users held |")
        else:
            lines.append(f"| {name} | {r['events_sent']:,} | {r['predictions_received']:,} | {r['lost']} | "
                         f"{r['duplicated']:,} | {r['dead_lettered']} | {_recovery(r['recoveries'])} |")
    return lines + ["", f"<sub>{_env(d)}</sub>", ""]


def render() -> str:
    out = [BEGIN, ""]
    for name, fn in (("next_item.json", next_item),
                     ("next_item_taobao_category.json", next_item_elsewhere),
                     ("next_action.json", next_action),
                     ("churn.json", churn), ("throughput.json", throughput), ("gru_step.json", gru_step),
                     ("scaling.json", scaling), ("two_workers.json", two_workers),
                     ("reliability.json", reliability),
                     ("reliability_million_users.json", reliability),
                     ("gru_step_cuda.json", gru_step_cuda), ("next_item_cuda.json", next_item_cuda)):
        d = _load(name)
        if d is None:
            out += [f"_{name}: not measured yet._", ""]
            continue
        d["_file"] = name
        if d.get("quick"):
            out += [f"_{name} holds a --quick run; numbers below are smoke-test sized._", ""]
        out += fn(d)
    out += throughput_by_device()
    out.append(END)
    return "\n".join(out)


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"README.md lacks the markers {BEGIN!r} / {END!r}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + render() + tail)
    print("README.md results section regenerated")


if __name__ == "__main__":
    main()
