"""Model bus artifacts without Kafka: packing, and every way verification refuses bad bytes."""

from __future__ import annotations

import hashlib

import pytest

from stream_app.admin import _configs, topic_specs
from stream_app.config import Settings
from stream_app.model_bus import ArtifactError, pack, unpack, verify

from .modelkit import make_registry


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    path = tmp_path_factory.mktemp("registry")
    version = make_registry(path, users=40, events=800)
    blob, manifest = pack(path, version)
    announcement = {"version": version, "weights_sha256": manifest["weights_sha256"],
                    "artifact": {"sha256": hashlib.sha256(blob).hexdigest()}}
    return blob, manifest, announcement


def test_a_packed_version_verifies_and_unpacks_to_its_files(packed):
    blob, manifest, announcement = packed
    manifest_b, weights = verify(announcement, blob)
    assert hashlib.sha256(weights).hexdigest() == manifest["weights_sha256"]
    assert unpack(blob)[0]["version"] == manifest["version"]


def test_damaged_or_inconsistent_artifacts_are_refused(packed):
    blob, manifest, announcement = packed
    flipped = bytearray(blob)
    flipped[-10] ^= 0xFF  # a weight byte
    with pytest.raises(ArtifactError, match="differs from the announcement"):
        verify(announcement, bytes(flipped))
    # the same damage, announced with the damaged bytes' own sha256: the weights checksum catches it
    a2 = {**announcement, "artifact": {"sha256": hashlib.sha256(bytes(flipped)).hexdigest()}}
    with pytest.raises(ArtifactError, match="weights sha256"):
        verify(a2, bytes(flipped))
    other = {**announcement, "version": "someone-else"}
    with pytest.raises(ArtifactError, match="holds"):
        verify(other, blob)
    for bad in (b"", b"not an artifact", blob[:-1]):
        a3 = {**announcement, "artifact": {"sha256": hashlib.sha256(bad).hexdigest()}}
        with pytest.raises(ArtifactError):
            verify(a3, bad)


def test_bus_topics_are_single_partition_and_compacted():
    s = Settings(namespace="x.", partitions=4)
    specs = topic_specs(s)
    assert specs[s.topics.model_updates] == specs[s.topics.model_artifacts] == 1
    assert _configs(s.topics.model_updates)["cleanup.policy"] == "compact"
    assert int(_configs(s.topics.model_artifacts)["max.message.bytes"]) > 64 * 1024 * 1024
    assert _configs(s.topics.events) == {}


def test_an_artifact_over_the_size_limit_is_refused_before_anything_is_sent(packed, monkeypatch):
    import stream_app.model_bus as bus

    blob, manifest, _ = packed
    monkeypatch.setattr(bus, "ARTIFACT_MAX_BYTES", len(blob) - 1)
    s = Settings(bootstrap="127.0.0.1:1")  # nothing listens there: no connection is attempted
    with pytest.raises(ArtifactError, match="over the artifact limit"):
        bus.publish(s, manifest["version"], manifest, blob)


def _damage(registry, version):
    w = registry / "versions" / version / "weights.safetensors"
    b = bytearray(w.read_bytes())
    b[-5] ^= 0xFF
    w.write_bytes(bytes(b))


def test_a_worker_starts_on_the_previous_version_in_service_when_current_is_damaged(tmp_path):
    from models.checkpoint import current_version, promote
    from stream_app.instruments import Metrics
    from stream_app.model_bus import open_predictor

    reg = tmp_path / "registry"
    v1 = make_registry(reg, users=40, events=800)
    v2 = make_registry(reg, users=40, events=800, seed=8)
    promote(reg, v2, "test", "a promotion")  # history: v1 was in service before v2
    _damage(reg, v2)
    metrics = Metrics()
    p = open_predictor(Settings(model_dir=reg, device="cpu"), metrics)
    assert p.version == v1 and current_version(reg) == v2  # CURRENT stays as the operator set it
    assert metrics.registry.get_sample_value("clickstream_model_load_failures_total") == 1
    assert p.wanted_version() is None  # the poll does not retry the refused version
