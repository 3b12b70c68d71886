"""The published JSON Schemas describe what the service really reads and writes."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import orjson
import pytest

from clickstream_tools.simulator import SimConfig, Storefront
from stream_app import records

SCHEMAS = Path(records.__file__).parent / "schemas"


def schema(name):
    return json.loads((SCHEMAS / name).read_text())


def test_prediction_payloads_match_their_schemas():
    e = records.Event("e1", "u1", 1.7e9, "view", "i1")
    na = orjson.loads(records.next_action_payload(e, "v1", np.full(6, 1 / 6), ["i2", "i7"], [0.5, 0.25],
                                                  1.7e9 + 1, False))
    assert na["top_items"] == [{"item_id": "i2", "score": 0.5}, {"item_id": "i7", "score": 0.25}]
    ch = orjson.loads(records.churn_payload(e, "v1", 0.3, 1800.0, 1.7e9 + 1, True))
    jsonschema.validate(na, schema("next_action.schema.json"))
    jsonschema.validate(ch, schema("churn.schema.json"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**ch, "churn_probability": 2}, schema("churn.schema.json"))


def test_event_schema_agrees_with_the_validator():
    s = schema("event.schema.json")
    for ev, _ in Storefront(SimConfig(users=20, events=300)).events():
        jsonschema.validate(ev, s)
        records.parse_event(orjson.dumps(ev))
    bad = {"event_id": "e", "user_id": "u", "ts": 1.7e9, "action": "view"}  # no item_id
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, s)
    with pytest.raises(records.InvalidEvent):
        records.parse_event(orjson.dumps(bad))
