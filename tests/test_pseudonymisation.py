"""Pseudonymisation: the keyed hash, and where it applies on the event path (EventPipeline)."""

from __future__ import annotations

import orjson
import pytest

from stream_app.config import Settings
from stream_app.pseudonymisation import Pseudonymiser, from_key
from stream_app.records import parse_event

from .test_pipeline import NOW, DictTable, Msg, make_pipeline, predictor  # noqa: F401 - fixture

KEY = b"a test key of at least 16 bytes"


def test_pseudonyms_are_keyed_stable_and_hide_the_id():
    p = Pseudonymiser(KEY)
    a = p.pseudonym("user-42")
    assert a == p.pseudonym("user-42") and a.startswith("p-") and len(a) == 34
    assert "user-42" not in a
    assert a != p.pseudonym("user-43")
    assert a != Pseudonymiser(b"another key, also 16+ bytes").pseudonym("user-42")  # rotation: new ids
    e = Pseudonymiser(KEY)(parse_event(orjson.dumps({
        "event_id": "e1", "user_id": "user-42", "ts": NOW, "action": "view", "item_id": "i9",
        "session_id": "user-42-s1"})))
    assert (e.user_id, e.session_id, e.event_id, e.item_id) == (a, p.pseudonym("user-42-s1"), "e1", "i9")
    assert "user-42" not in repr(Pseudonymiser(KEY)) and KEY.decode() not in repr(Pseudonymiser(KEY))


def test_key_comes_from_the_environment_and_must_not_be_trivial():
    assert from_key(Settings.from_env({}).pseudonym_key) is None
    s = Settings.from_env({"CLICKSTREAM_PSEUDONYM_KEY": KEY.decode()})
    assert from_key(s.pseudonym_key) == Pseudonymiser(KEY)
    assert KEY.decode() not in repr(s)
    with pytest.raises(ValueError, match="16 bytes"):
        from_key("short")


def test_pipeline_stores_and_publishes_only_pseudonyms_and_dead_letters_keep_the_original(predictor):  # noqa: F811
    table = DictTable()
    pipe = make_pipeline(predictor, table, pseudonymise=Pseudonymiser(KEY))
    raw = [orjson.dumps({"event_id": f"e{i}", "user_id": "alice", "ts": NOW - 100 + i, "action": "view",
                         "item_id": "i1", "session_id": "alice-s1"}) for i in range(3)]
    bad = b'{"event_id": "x", "user_id": "alice", "ts": 1, "action": "view"}'
    out = pipe.process([Msg(b"alice", v, 0, i) for i, v in enumerate([*raw, bad])])
    alias = Pseudonymiser(KEY).pseudonym("alice")
    published = [m for m in out.messages if m.topic in ("na", "churn")]
    assert len(published) == 6
    for m in published:
        assert m.key == alias.encode() and orjson.loads(m.value)["user_id"] == alias
        assert b"alice" not in m.value
    assert {user for _, user in out.rows} == {alias}  # state rows: the changelog key and local store
    (dead,) = [m for m in out.messages if m.topic == "dlq"]
    assert (dead.key, dead.value) == (b"alice", bad)  # kept as sent, for debugging (README)
