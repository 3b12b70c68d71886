"""Retrain's pure parts: warm starts, judging through step(), the promotion rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clickstream_tools.simulator import SimConfig, Storefront
from models.challenger import Policy, challenge, decide
from models.checkpoint import LoadedModel
from models.data import from_sequences, make_batch
from models.datasets import build_vocabs, encode_event, events_to_seqdata
from models.evaluate import predict, step_metrics
from models.gru import ClickstreamGRU, GRUConfig
from models.metrics import recall_mrr_at_k
from models.train import TrainConfig
from models.warmstart import WarmStart, extend_vocab

CFG = GRUConfig(n_items=0, n_categories=0, emb_dim=16, hidden=16, item_buckets=16,
                category_buckets=4, repeat_flag=True, gap_buckets=True, dropout=0.0)


def _events(n: int = 3000, seed: int = 1, **kw) -> list[dict]:
    cfg = SimConfig(users=80, events=n, seed=seed, items=300, categories=12, **kw)
    return [e for e, _ in Storefront(cfg).events()]


def test_extend_vocab_keeps_old_indices_and_appends_new_by_frequency():
    from models.data import Vocab

    old = Vocab(("a", "b"), 8)
    new = extend_vocab(old, ["c", "d", "d", "a", None, "e"], min_count=1)
    assert new.ids == ("a", "b", "d", "c", "e") and new.buckets == 8
    assert extend_vocab(old, ["c", "d", "d"], min_count=2).ids == ("a", "b", "d")


def test_widened_champion_predicts_exactly_as_before():
    """New rows start as the bucket the champion filed the item under: the widened model's
    states and action/churn outputs equal the champion's on any stream, new items included."""
    evs = _events()
    old_items, old_cats = build_vocabs(evs[:1000], CFG.item_buckets, CFG.category_buckets)
    torch.manual_seed(0)
    champ = ClickstreamGRU(GRUConfig(**{**CFG.to_dict(), "n_items": len(old_items),
                                        "n_categories": len(old_cats)})).eval()
    model, items, cats = WarmStart(champ, old_items, old_cats).extended(evs)
    model.eval()
    assert len(items) > len(old_items) and items.ids[:len(old_items)] == old_items.ids
    by_user: dict[str, list[dict]] = {}
    for e in evs[1000:1600]:
        by_user.setdefault(e["user_id"], []).append(e)
    users = list(by_user)
    outs = []
    for m, iv, cv in ((champ, old_items, old_cats), (model, items, cats)):
        data = from_sequences([[encode_event(e, iv, cv) for e in by_user[u]] for u in users], True)
        out, _, h = m(make_batch(data, list(range(len(users))), m.cfg).x)
        outs.append((out.action_logits, out.churn_logit, h))
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b)
    # a known item keeps its embedding; a new one starts from its old bucket
    new_item = items.ids[len(old_items)]
    assert torch.equal(model.item_emb.weight[items.index(new_item)],
                       champ.item_emb.weight[old_items.index(new_item)])


def test_step_metrics_match_the_full_forward_when_every_item_is_known():
    evs = _events(2000)
    items, cats = build_vocabs(evs, CFG.item_buckets, CFG.category_buckets)
    torch.manual_seed(1)
    model = ClickstreamGRU(GRUConfig(**{**CFG.to_dict(), "n_items": len(items),
                                        "n_categories": len(cats)})).eval()
    from_ts = float(np.quantile([e["ts"] for e in evs], 0.6))
    got = step_metrics(model, items, cats, evs, from_ts)
    ref = predict(model, events_to_seqdata(evs, items, cats), from_ts, len(items))
    hit, mrr = recall_mrr_at_k(ref.item_ranks, 20)
    assert got["n_item"] == len(ref.item_ranks) > 100 and got["n_item_unknown"] == 0
    assert got["item_hit_at_20"] == pytest.approx(hit) and got["item_mrr_at_20"] == pytest.approx(mrr)
    p = ref.action_probs[np.arange(len(ref.action_labels)), ref.action_labels]
    assert got["action_log_loss"] == pytest.approx(float(-np.log(p).mean()), rel=1e-4)
    # a model that knows none of the items misses every item prediction
    from models.data import Vocab

    blind = step_metrics(model, Vocab((), items.buckets), cats, evs, from_ts)
    assert blind["item_hit_at_20"] == 0.0 and blind["n_item_unknown"] == blind["n_item"]


M = {"item_hit_at_20": 0.30, "item_mrr_at_20": 0.10, "action_log_loss": 1.0, "n_item": 500}


@pytest.mark.parametrize("challenger,promote,why", [
    ({**M, "item_hit_at_20": 0.32, "item_mrr_at_20": 0.12}, True, "better"),
    ({**M, "item_hit_at_20": 0.32, "item_mrr_at_20": 0.101}, False, "item_mrr_at_20"),
    ({**M, "item_hit_at_20": 0.32, "item_mrr_at_20": 0.12, "action_log_loss": 1.2}, False,
     "action_log_loss worse"),
    ({**M, "item_hit_at_20": 0.50, "item_mrr_at_20": math.nan}, False, "non-finite"),
    ({**M, "item_hit_at_20": 0.50, "item_mrr_at_20": 0.2, "n_item": 3}, False, "too few"),
])
def test_promotion_rule(challenger, promote, why):
    d = decide(M, challenger, Policy(margin=0.005))
    assert d.promote is promote and why in d.reason
    assert decide(None, challenger, Policy()).promote is (promote or "item_mrr_at_20" in why
                                                         or "action_log_loss" in why)


def test_challenge_without_and_with_a_champion():
    evs = _events(4000, seed=4)
    tcfg = TrainConfig(epochs=2, batch_tokens=1024, patience=1)
    first = challenge(evs, None, CFG, tcfg, Policy(), device="cpu")
    assert first.decision.promote and first.champion is None
    assert first.challenger["n_item"] >= 50 and first.trained.report["warm_start"] is False
    champ = LoadedModel(first.trained.model, "v1", first.trained.items, first.trained.categories,
                        {"data": {"split": first.trained.split}})
    second = challenge(evs, champ, CFG, tcfg, Policy(margin=10.0), device="cpu")
    assert not second.decision.promote and "margin 10.0" in second.decision.reason
    assert second.trained.report["warm_start"] is True
    # the champion saw the window up to its validation end: nothing of it is judged again
    assert second.judged_from_ts >= first.trained.split["valid_before_ts"]
    assert set(second.record()) >= {"champion", "challenger", "split", "training"}


def test_challenge_trains_and_judges_under_the_workers_window():
    """The retrain worker passes the workers' window (CLICKSTREAM_WINDOW_*): training's rows and
    the judge's step() both apply it, as a worker keeping that window would."""
    from models.features import WindowLimits
    from stream_app.config import Settings

    limits = Settings.from_env({"CLICKSTREAM_WINDOW_EVENTS": "5",
                                "CLICKSTREAM_WINDOW_SECONDS": "900"}).window_limits()
    assert limits == WindowLimits(5, 900.0)
    evs = _events(3000, seed=5)
    ch = challenge(evs, None, CFG, TrainConfig(epochs=1, batch_tokens=1024), Policy(),
                   device="cpu", limits=limits)
    assert ch.trained.data.limits == limits
    t = ch.trained
    judged = step_metrics(t.model, t.items, t.categories, evs, ch.judged_from_ts, limits=limits)
    assert judged == ch.challenger
    wide = step_metrics(t.model, t.items, t.categories, evs, ch.judged_from_ts)
    assert wide != ch.challenger  # the window changes what step() sees, so the verdict's inputs
