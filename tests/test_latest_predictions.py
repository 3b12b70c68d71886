"""The example downstream consumer's logic (examples/latest_predictions.py): latest per user,
deduplicated on (event_id, model_version), served over HTTP. No broker."""

from __future__ import annotations

import importlib.util
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from clickstream_tools.broker import free_port

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "latest_predictions.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("latest_predictions", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _pred(eid, ts, version="v1", user="u1", **kw):
    return {"event_id": eid, "user_id": user, "event_ts": ts, "model_version": version, **kw}


def test_latest_per_user_deduplicated_on_event_and_model_version(example):
    store = example.LatestPredictions()
    assert store.apply("next_action", _pred("e1", 10.0))
    assert not store.apply("next_action", _pred("e1", 10.0, replayed=True))  # redelivered copy
    assert store.apply("next_action", _pred("e2", 11.0))
    assert not store.apply("next_action", _pred("e0", 9.0))  # older event arriving late
    assert store.apply("next_action", _pred("e2", 11.0, version="v2"))  # same event, new model
    assert store.apply("churn", _pred("e2", 11.0, churn_probability=0.3))
    got = store.get("u1")
    assert got["next_action"]["event_id"] == "e2" and got["next_action"]["model_version"] == "v2"
    assert got["churn"]["churn_probability"] == 0.3
    assert store.get("nobody") is None
    assert store.stats() == {"users": 1, "applied": 4, "duplicates": 1}


def test_seen_set_is_bounded(example):
    store = example.LatestPredictions(seen_max=3)
    for i in range(10):
        store.apply("churn", _pred(f"e{i}", float(i)))
    assert len(store.seen) == 3


def test_http_serves_users_and_health(example):
    store = example.LatestPredictions()
    store.apply("next_action", _pred("e1", 10.0, user="user 7"))
    port = free_port()
    server = example.make_server(store, "127.0.0.1", port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{base}/users/user%207", timeout=5) as r:
            body = json.loads(r.read())
        assert body["user_id"] == "user 7" and body["next_action"]["event_id"] == "e1"
        assert body["churn"] is None
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{base}/users/unknown", timeout=5)
        assert e.value.code == 404
        with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
            assert json.loads(r.read())["users"] == 1
    finally:
        server.shutdown()
        server.server_close()
