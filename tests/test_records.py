"""Schema v1 validation: every way a storefront can get it wrong ends in a stable reason code."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_app import records as r
from stream_app.records import InvalidEvent, parse_event

BASE = {"event_id": "e1", "user_id": "u1", "ts": 1_767_225_600.5, "action": "view", "item_id": "i9"}


def make(**changes):
    d = dict(BASE, **changes)
    return orjson.dumps({k: v for k, v in d.items() if v is not None})


def reason_of(raw, key=None) -> str:
    with pytest.raises(InvalidEvent) as exc:
        parse_event(raw, key)
    return exc.value.reason


def test_minimal_valid_event():
    e = parse_event(make(), b"u1")
    assert (e.event_id, e.user_id, e.ts, e.action, e.item_id) == ("e1", "u1", 1_767_225_600.5, "view", "i9")
    assert e.price is None and e.query is None


def test_all_optional_fields_and_unknown_extras():
    e = parse_event(make(category_id="c1", price=12, session_id="s", query="q", extra={"x": 1}))
    assert (e.category_id, e.price, e.session_id, e.query) == ("c1", 12.0, "s", "q")


@pytest.mark.parametrize("ts,expected", [
    ("2026-01-01T00:00:00Z", 1_767_225_600.0),
    ("2026-01-01T01:00:00+01:00", 1_767_225_600.0),
    ("2026-01-01T00:00:00.250Z", 1_767_225_600.25),
    (1_767_225_600, 1_767_225_600.0),
])
def test_timestamp_forms(ts, expected):
    assert parse_event(make(ts=ts)).ts == pytest.approx(expected)


@pytest.mark.parametrize("ts", ["2026-01-01T00:00:00", "yesterday", 1_767_225_600_000, -5, True])
def test_bad_timestamps(ts):
    assert reason_of(make(ts=ts)) in (r.INVALID_VALUE, r.INVALID_TYPE)


def test_milliseconds_get_a_hint():
    with pytest.raises(InvalidEvent, match="milliseconds"):
        parse_event(make(ts=1_767_225_600_000))


def test_search_needs_no_item_but_view_does():
    assert parse_event(make(action="search", item_id=None, query="red shoes")).item_id is None
    assert reason_of(make(item_id=None)) == r.MISSING_FIELD


@pytest.mark.parametrize("field", ["event_id", "user_id", "action", "ts"])
def test_required_fields(field):
    assert reason_of(make(**{field: None})) == r.MISSING_FIELD


def test_every_schema_action_is_accepted():
    for a in r.ACTIONS:
        assert parse_event(make(action=a)).action == a


@pytest.mark.parametrize("raw,reason", [
    (b"{not json", r.INVALID_JSON),
    (b"", r.INVALID_JSON),
    (None, r.INVALID_JSON),
    (b"[1, 2]", r.NOT_AN_OBJECT),
    (make(action="hover"), r.INVALID_VALUE),
    (make(user_id=""), r.INVALID_VALUE),
    (make(user_id=42), r.INVALID_TYPE),
    (make(price="cheap"), r.INVALID_TYPE),
    (make(price=-1), r.INVALID_VALUE),
    (make(price=1e300), r.INVALID_VALUE),
    (make(item_id="x" * 600), r.INVALID_VALUE),
    (b" " * (r.MAX_EVENT_BYTES + 1), r.TOO_LARGE),
])
def test_rejections(raw, reason):
    assert reason_of(raw) == reason


def test_key_must_equal_user_id():
    assert reason_of(make(), key=b"u2") == r.KEY_MISMATCH
    assert parse_event(make(), key=None).user_id == "u1"


def test_roundtrip_through_normalised_json():
    e = parse_event(make(ts="2026-01-01T00:00:00Z", price=3.5))
    assert parse_event(e.to_json()) == e


def test_dead_letter_headers_keep_original_and_say_why():
    err = InvalidEvent(r.INVALID_VALUE, "unknown action 'hover'")
    h = dict(r.dead_letter_headers(err, "clickstream.events", 3, 17, [("trace", b"abc")]))
    assert h["trace"] == b"abc"
    assert h["x-dlq-reason"] == b"invalid_value"
    assert h["x-dlq-source-topic"] == b"clickstream.events"
    assert (h["x-dlq-source-partition"], h["x-dlq-source-offset"]) == (b"3", b"17")
    assert b"hover" in h["x-dlq-message"]


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(raw):
    try:
        parse_event(raw, b"k")
    except InvalidEvent as e:
        assert e.reason in r.REASONS


@given(st.dictionaries(st.sampled_from(list(BASE) + ["price", "query", "zzz"]),
                       st.one_of(st.none(), st.text(max_size=5), st.integers(-(2**63), 2**63 - 1),
                                 st.floats(), st.booleans()), max_size=8))
def test_arbitrary_objects_never_crash(obj):
    try:
        parse_event(orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY))
    except InvalidEvent as e:
        assert e.reason in r.REASONS
