"""A churn_profile model served end to end: the worker loads the checkpoint, fills the churn
head's profile from each user's state (restarted at an idle reset), and publishes what training's
path computes for the same events."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import torch

from clickstream_tools.sources import simulated_events
from models.checkpoint import load_version, save_version
from models.data import make_batch
from models.datasets import events_to_seqdata
from models.features import WindowLimits
from models.gru import GRUConfig
from models.recipes import train_on_events
from models.train import TrainConfig
from stream_app.admin import ensure_topics, topic_specs
from stream_app.config import Settings

from .helpers import start_worker
from .test_stream import _original, _predictions_then_stop, _send

pytestmark = pytest.mark.integration

SECONDS = 3600.0  # the worker's CLICKSTREAM_WINDOW_SECONDS: a longer pause resets a user
LIMITS = WindowLimits(20, SECONDS)


@torch.no_grad()
def _reference(registry, events: list[dict]) -> dict[str, tuple[np.ndarray, float]]:
    """event_id -> (action probs, churn) from training's path (rows split at idle resets)."""
    lm = load_version(registry)
    data = events_to_seqdata(events, lm.items, lm.categories, limits=LIMITS)
    b = make_batch(data, list(range(len(data))), lm.model.cfg)
    out, _, _ = lm.model(b.x)
    probs = torch.softmax(out.action_logits, -1).numpy()
    churn = torch.sigmoid(out.churn_logit).numpy()
    ref = {}
    for r in range(len(data)):
        for t in range(int(data.lengths()[r])):
            e = events[int(data.origin[data.offsets[r] + t])]
            ref[e["event_id"]] = (probs[r, t], float(churn[r, t]))
    return ref


def test_a_churn_profile_model_is_served_as_trained(kafka_bootstrap, namespace, tmp_path):
    evs, _ = simulated_events(120, 3000, seed=11)
    cfg = GRUConfig(n_items=0, n_categories=0, emb_dim=24, hidden=32, window=20, item_buckets=32,
                    category_buckets=8, churn_profile=True, churn_horizon_s=600.0)
    tr = train_on_events(evs, cfg, TrainConfig(epochs=1, batch_tokens=2048), device="cpu",
                         limits=LIMITS)
    assert tr.model.cfg.churn_profile
    registry = tmp_path / "registry"
    save_version(registry, tr.model, tr.items, tr.categories, {"source": "test"}, {})
    # every other user pauses for two hours halfway through their events: an idle reset
    half = len(evs) // 2
    users = sorted({e["user_id"] for e in evs})
    paused = set(users[::2])
    events = [{**e, "ts": e["ts"] - 7200.0} if n < half and e["user_id"] in paused else e
              for n, e in enumerate(evs)]
    s = Settings(bootstrap=kafka_bootstrap, namespace=namespace, partitions=4)
    ensure_topics(kafka_bootstrap, topic_specs(s))
    _send(kafka_bootstrap, s.topics.events, [(e["user_id"].encode(), orjson.dumps(e)) for e in events])
    worker = start_worker(kafka_bootstrap, namespace, tmp_path,
                          env={"CLICKSTREAM_PARTITIONS": "4", "CLICKSTREAM_WINDOW_SECONDS": str(SECONDS)},
                          extra_args=["--model-dir", str(registry), "--device", "cpu"])
    na_by, ch_by = _predictions_then_stop(worker, kafka_bootstrap, s.topics, len(events), timeout=180)
    ref = _reference(registry, events)
    assert set(ref) <= set(ch_by) and len(ref) > 0.9 * len(events)
    # the paused users really were reset (the profile restarts there)
    data = events_to_seqdata(events, tr.items, tr.categories, limits=LIMITS)
    assert len(data) > len(users)
    for eid, (probs, churn) in ref.items():
        got = _original(na_by[eid])
        np.testing.assert_allclose(list(got["action_probs"].values()), probs, atol=1e-5)
        assert _original(ch_by[eid])["churn_probability"] == pytest.approx(churn, abs=1e-5)
