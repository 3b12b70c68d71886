"""Fleet-wide model hot swap over Kafka: announcements, artifacts, and the worker's follower.

Workers on other machines share no disk with the retrain worker or the operator; Kafka is what
every one of them reaches. Two compacted topics carry a promotion:

- `<ns>models.artifacts` (1 partition, compacted, key = version): one message per version, the
  manifest and the safetensors weights packed together (`pack`). A single message, not chunks:
  the artifact is taken or refused whole, and compaction keeps exactly one copy per version. The
  topic's `max.message.bytes` is raised to `ARTIFACT_MAX_BYTES` (64 MiB; the broker's default is
  1 MiB); a larger model is refused by `announce` with a clear error (raise the constant and the
  topic setting together, or move the bytes to an object store and announce its address; the
  announcement's `artifact` field names where the bytes are). The topic grows by one message per
  version announced; a tombstone (key = version, no value) removes one after compaction.
- `<ns>models.updates` (1 partition, compacted, key = b"current"): the announcement, JSON:
  version, weights sha256, a manifest summary (config, data, metrics, created), where the
  artifact is (topic, partition, offset, size, sha256 of the packed bytes), why and by whom.
  Compaction keeps the latest promotion, so a worker that starts reads it from the beginning.

`announce(settings, registry, version)` publishes both, in that order (an announcement never
names bytes that are not on the broker); the retrain worker and `stream-app models
promote/rollback` call it after changing CURRENT.

In the worker, `ModelFollower.follow_bus` reads the updates topic with a consumer of its own (no
group, every partition, from the beginning: every worker sees every announcement; a shared-group
agent would hand it to one worker only). For an announcement naming another version it fetches
the artifact, verifies it (sha256 of the packed bytes, the manifest's version and weights sha256
against the announcement, then `Predictor.prepare`: checksum, config, finite weights, and the
worker's window) in a thread, writes it into the local registry (staging folder, renamed into
`versions/`), installs it between two batches and points the local CURRENT at it. A bad artifact
is refused (`clickstream_model_load_failures_total`, a log line) and the old version keeps
serving; a broker that does not deliver the artifact (a Kafka error, a timeout) refuses nothing:
the follower reconnects after 5 s, re-reads the latest announcement and tries again. The local
CURRENT poll (`follow_registry`) stays as the single-machine path; both go through one lock and
one refusal list.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import socket
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

from kafka.errors import KafkaError

from models.checkpoint import CheckpointError, LoadedModel, current_version, set_current

from .config import Settings
from .instruments import Metrics
from .predictor import Predictor

log = logging.getLogger(__name__)

ARTIFACT_MAX_BYTES = 64 * 1024 * 1024
ANNOUNCE_KEY = b"current"
ANNOUNCEMENT_FORMAT = 1
_MAGIC = b"clickstream-gru-artifact/1\n"
_LEN = struct.Struct("<I")
_FETCH_TIMEOUT_S = 60.0


class ArtifactError(CheckpointError):
    """An artifact that cannot be served: missing, too large, damaged or inconsistent."""


class FetchTimeout(RuntimeError):
    """The broker did not deliver in time: not the artifact's fault, so it is tried again."""


def _client_kwargs(settings: Settings) -> dict[str, Any]:
    kw = getattr(settings, "kafka_client_kwargs", None)  # security settings, where configured
    return dict(kw()) if callable(kw) else {}


def _sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# --- artifacts ---------------------------------------------------------------------------------

def pack(registry: Path, version: str) -> tuple[bytes, dict[str, Any]]:
    """A version's manifest and weights as one message; returns (bytes, manifest)."""
    folder = Path(registry) / "versions" / version
    try:
        manifest_b = (folder / "manifest.json").read_bytes()
        weights = (folder / "weights.safetensors").read_bytes()
    except FileNotFoundError as e:
        raise ArtifactError(f"version {version} is not complete in {registry}: {e}") from None
    header = json.dumps({"version": version, "manifest_bytes": len(manifest_b),
                         "weights_bytes": len(weights)}).encode()
    return b"".join([_MAGIC, _LEN.pack(len(header)), header, manifest_b, weights]), json.loads(manifest_b)


def unpack(blob: bytes) -> tuple[dict[str, Any], bytes, bytes]:
    """(header, manifest bytes, weights bytes); raises ArtifactError on anything malformed."""
    try:
        if not blob.startswith(_MAGIC):
            raise ValueError("not a clickstream-gru artifact")
        off = len(_MAGIC)
        (n,) = _LEN.unpack_from(blob, off)
        off += _LEN.size
        header = json.loads(blob[off:off + n])
        off += n
        m, w = int(header["manifest_bytes"]), int(header["weights_bytes"])
        if off + m + w != len(blob):
            raise ValueError(f"sizes say {off + m + w} bytes, the message has {len(blob)}")
        return header, blob[off:off + m], blob[off + m:]
    except (ValueError, KeyError, TypeError, struct.error) as e:
        raise ArtifactError(f"malformed artifact: {e}") from None


# --- publishing ----------------------------------------------------------------------------------

def ensure_bus_topics(settings: Settings) -> None:
    """Create the two compacted topics (admin.topic_specs) when missing."""
    from .admin import ensure_topics, topic_specs

    t = settings.topics
    specs = topic_specs(settings)
    kw = _client_kwargs(settings)
    ensure_topics(settings.bootstrap, {n: specs[n] for n in (t.model_artifacts, t.model_updates)},
                  *([kw] if kw else []))  # type: ignore[call-arg]


def _summary(manifest: dict[str, Any]) -> dict[str, Any]:
    return {k: manifest.get(k) for k in ("created_unix", "config", "data", "metrics")}


def publish(settings: Settings, version: str, manifest: dict[str, Any], packed: bytes, *,
            reason: str = "", by: str = "") -> dict[str, Any]:
    """Put an artifact on the broker, then the announcement that names it; returns the latter."""
    from kafka import KafkaProducer

    if len(packed) > ARTIFACT_MAX_BYTES:
        raise ArtifactError(f"version {version} packs to {len(packed)} bytes, over the artifact "
                            f"limit of {ARTIFACT_MAX_BYTES} (model_bus.ARTIFACT_MAX_BYTES)")
    t = settings.topics
    ensure_bus_topics(settings)
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap, acks="all", linger_ms=0,
                             max_request_size=ARTIFACT_MAX_BYTES + (1 << 20),
                             **_client_kwargs(settings))
    try:
        meta = producer.send(t.model_artifacts, key=version.encode(), value=packed).get(
            timeout=_FETCH_TIMEOUT_S)
        announcement = {
            "format": ANNOUNCEMENT_FORMAT, "version": version,
            "weights_sha256": manifest.get("weights_sha256"), "manifest": _summary(manifest),
            "artifact": {"topic": t.model_artifacts, "partition": meta.partition,
                         "offset": meta.offset, "key": version, "bytes": len(packed),
                         "sha256": _sha256(packed)},
            "announced_unix": time.time(), "reason": reason,
            "by": by or f"{os.environ.get('USER', '?')}@{socket.gethostname()}",
        }
        producer.send(t.model_updates, key=ANNOUNCE_KEY,
                      value=json.dumps(announcement).encode()).get(timeout=_FETCH_TIMEOUT_S)
    finally:
        producer.close()
    log.info("announced model %s (%d bytes at %s[%d]@%d)", version, len(packed),
             t.model_artifacts, meta.partition, meta.offset)
    return announcement


def announce(settings: Settings, registry: Path, version: str, *, reason: str = "",
             by: str = "") -> dict[str, Any]:
    """Tell every worker that `version` of `registry` is now the one to serve (call it after
    changing CURRENT: a promotion or a rollback). Returns the announcement."""
    packed, manifest = pack(Path(registry), version)
    return publish(settings, version, manifest, packed, reason=reason, by=by)


def latest_announcement(settings: Settings, timeout_s: float = 30.0) -> dict[str, Any] | None:
    """The newest announcement on the updates topic, or None (read to its end, no group)."""
    from kafka import KafkaConsumer, TopicPartition

    ensure_bus_topics(settings)
    tp = TopicPartition(settings.topics.model_updates, 0)
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False,
                             group_id=None, **_client_kwargs(settings))
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        latest: dict[str, Any] | None = None
        deadline = time.monotonic() + timeout_s
        while consumer.position(tp) < end and time.monotonic() < deadline:
            for r in consumer.poll(timeout_ms=500).get(tp, []):
                latest = _parse_announcement(r.key, r.value) or latest
        return latest
    finally:
        consumer.close()


def _parse_announcement(key: bytes | None, value: bytes | None) -> dict[str, Any] | None:
    if key != ANNOUNCE_KEY or not value:
        return None
    try:
        a = json.loads(value)
        if isinstance(a, dict) and isinstance(a.get("version"), str) and isinstance(a.get("artifact"), dict):
            return a
    except ValueError:
        pass
    log.warning("ignoring an unreadable model announcement (%d bytes)", len(value))
    return None


# --- fetching and verifying (blocking: runs in a thread) -----------------------------------------

def fetch_artifact(settings: Settings, announcement: dict[str, Any]) -> bytes:
    """The packed artifact an announcement names: at its offset, or (compaction moved it: the
    same version was announced again) the newest message with its key."""
    from kafka import KafkaConsumer, TopicPartition

    art = announcement["artifact"]
    tp = TopicPartition(art["topic"], int(art["partition"]))
    key = str(art["key"]).encode()
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False,
                             group_id=None, fetch_max_bytes=ARTIFACT_MAX_BYTES + (1 << 20),
                             max_partition_fetch_bytes=ARTIFACT_MAX_BYTES + (1 << 20),
                             **_client_kwargs(settings))
    try:
        consumer.assign([tp])
        end = consumer.end_offsets([tp])[tp]
        consumer.seek(tp, min(int(art["offset"]), end))
        found: bytes | None = None
        deadline = time.monotonic() + _FETCH_TIMEOUT_S
        while consumer.position(tp) < end and time.monotonic() < deadline:
            recs = consumer.poll(timeout_ms=500, max_records=1).get(tp, [])
            if recs:
                r = recs[0]
                if r.key == key and r.value is not None:
                    return bytes(r.value)
                break  # not at its offset: scan the topic for the newest copy
        consumer.seek_to_beginning(tp)
        while consumer.position(tp) < end and time.monotonic() < deadline:
            for r in consumer.poll(timeout_ms=500).get(tp, []):
                if r.key == key:
                    found = None if r.value is None else bytes(r.value)
        if consumer.position(tp) < end:
            raise FetchTimeout(f"reading {tp.topic} took longer than {_FETCH_TIMEOUT_S:g} s")
        if found is None:
            raise ArtifactError(f"no artifact for version {art['key']} in {tp.topic}")
        return found
    finally:
        consumer.close()


def verify(announcement: dict[str, Any], blob: bytes) -> tuple[bytes, bytes]:
    """Checks the bytes against the announcement; returns (manifest bytes, weights bytes)."""
    version = announcement["version"]
    if _sha256(blob) != announcement["artifact"].get("sha256"):
        raise ArtifactError(f"artifact of {version}: sha256 differs from the announcement")
    header, manifest_b, weights = unpack(blob)
    manifest = json.loads(manifest_b)
    if header.get("version") != version or manifest.get("version") != version:
        raise ArtifactError(f"artifact announced as {version} holds {manifest.get('version')}")
    sha = _sha256(weights)
    if sha != manifest.get("weights_sha256") or sha != announcement.get("weights_sha256"):
        raise ArtifactError(f"artifact of {version}: weights sha256 {sha[:12]}... differs from the "
                            "manifest or the announcement")
    return manifest_b, weights


# --- the worker's side ---------------------------------------------------------------------------

class ModelFollower:
    """Switches the worker's predictor to the announced (or locally CURRENT) version."""

    def __init__(self, settings: Settings, predictor: Predictor, metrics: Metrics) -> None:
        self.settings = settings
        self.predictor = predictor
        self.metrics = metrics
        self.registry = predictor.registry
        self.refused: set[tuple[str, str]] = set()  # (version, artifact sha256 or "local")
        self._lock = asyncio.Lock()

    # the single-machine path: the registry directory's CURRENT
    async def follow_registry(self) -> None:
        version = self.predictor.wanted_version()
        if version is not None:
            await self._switch(version, (version, "local"), None)

    # the fleet path
    async def follow_bus(self) -> None:
        """Runs for the worker's lifetime; a failure of the consumer is logged and retried."""
        while True:
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the old version keeps serving; try again
                log.exception("reading model announcements failed; retrying in 5 s")
                await asyncio.sleep(5.0)

    async def _consume(self) -> None:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.structs import TopicPartition

        tp = TopicPartition(self.settings.topics.model_updates, 0)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.bootstrap, group_id=None,
                                    enable_auto_commit=False, **_client_kwargs(self.settings))
        await consumer.start()
        try:
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            latest: dict[str, Any] | None = None
            while await consumer.position(tp) < end:  # catch up first: act on the newest only
                for r in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                    latest = _parse_announcement(r.key, r.value) or latest
            while True:
                if latest is not None:
                    await self.apply(latest)
                latest = None
                for r in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                    latest = _parse_announcement(r.key, r.value) or latest
        finally:
            await consumer.stop()

    async def apply(self, announcement: dict[str, Any]) -> None:
        version = announcement["version"]
        await self._switch(version, (version, str(announcement["artifact"].get("sha256"))),
                           announcement)

    async def _switch(self, version: str, refusal_key: tuple[str, str],
                      announcement: dict[str, Any] | None) -> None:
        if version == self.predictor.version or refusal_key in self.refused:
            return
        async with self._lock:
            if version == self.predictor.version:
                return
            try:  # fetching, verifying and loading happen off the event loop
                loaded = await asyncio.to_thread(self._obtain, version, announcement)
            except (KafkaError, FetchTimeout):
                raise  # the broker, not the artifact: follow_bus reconnects and tries again
            except Exception as exc:  # noqa: BLE001 - a bad artifact must not stop serving
                self.refused.add(refusal_key)
                self.metrics.model_load_failures.inc()
                log.error("refusing model version %s: %s; still serving %s", version, exc,
                          self.predictor.version)
                return
            old = self.predictor.version
            # no await between here and the next batch's scoring: the swap falls between batches
            self.predictor.install(loaded)
            self.metrics.set_model(self.predictor.version, str(self.predictor.device))
            log.info("model swapped %s -> %s (%s)", old, version,
                     "announced" if announcement is not None else "registry CURRENT")
            if announcement is not None:  # the local poll must agree with what is served
                await asyncio.to_thread(set_current, self.registry, version)

    def _obtain(self, version: str, announcement: dict[str, Any] | None) -> LoadedModel:
        """Blocking: the verified model, from the local registry or from the broker."""
        local = self.registry / "versions" / version
        if announcement is None or (local / "manifest.json").exists():
            return self._checked(self.predictor.prepare(version))
        blob = fetch_artifact(self.settings, announcement)
        manifest_b, weights = verify(announcement, blob)
        incoming = Path(tempfile.mkdtemp(dir=self.registry, prefix=".incoming-"))
        try:
            folder = incoming / "versions" / version
            folder.mkdir(parents=True)
            for name, data in (("weights.safetensors", weights), ("manifest.json", manifest_b)):
                with open(folder / name, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
            lm = self._checked(self.predictor.prepare(version, registry=incoming))
            (self.registry / "versions").mkdir(exist_ok=True)
            os.replace(folder, local)  # only a verified version enters the registry
            return lm
        finally:
            shutil.rmtree(incoming, ignore_errors=True)

    def _checked(self, lm: LoadedModel) -> LoadedModel:
        if lm.model.cfg.window > self.settings.window_events:
            raise CheckpointError(f"version {lm.version} reads a {lm.model.cfg.window}-event window; "
                                  f"this worker keeps {self.settings.window_events}")
        return lm


def open_predictor(settings: Settings, metrics: Metrics) -> Predictor:
    """The model a starting worker serves: the registry's CURRENT or, when that one cannot be
    loaded (damaged or inconsistent), the versions that were in service before it (the registry's
    history, most recent first), and last the version announced on the model bus (fetched,
    verified and made CURRENT). Each refusal is counted and logged and the worker starts anyway;
    the poll does not retry a refused version. Raises CheckpointError when nothing loads."""
    from models.checkpoint import read_history

    registry = settings.model_dir
    candidates = [current_version(registry)]
    for e in reversed(read_history(registry)):
        candidates += [e.get("version"), e.get("previous")]
    refused: list[str] = []

    def load(version: str) -> Predictor | None:
        try:
            return Predictor(registry, device=settings.device, top_k=settings.top_k,
                             cache_users=settings.cache_users, version=version)
        except Exception as exc:  # noqa: BLE001 - a damaged version must not keep the worker down
            metrics.model_load_failures.inc()
            log.error("refusing model version %s at start: %s", version, exc)
            refused.append(version)
            return None

    p = None
    for version in dict.fromkeys(v for v in candidates if v):
        if (p := load(version)) is not None:
            break
    if p is None and refused:  # nothing local loads: the fleet's version
        try:
            announced = fetch_latest(settings, registry)
        except CheckpointError as exc:
            metrics.model_load_failures.inc()
            log.error("the announced model cannot be used either: %s", exc)
            announced = None
        except Exception as exc:  # noqa: BLE001 - the error below says what was tried
            log.error("the model bus could not be read: %r", exc)
            announced = None
        if announced is not None and announced not in refused:
            p = load(announced)
    if p is None:
        raise CheckpointError(f"no model version in {registry} can be served (refused: "
                              f"{', '.join(refused) or 'none'})")
    if refused:
        log.error("the registry's CURRENT could not be served; serving %s", p.version)
    p.refused.update(refused)
    return p


def fetch_latest(settings: Settings, registry: Path) -> str | None:
    """A worker with an empty registry (a new machine): the announced version, fetched, verified
    and made CURRENT; None when nothing was announced. Blocking; used before the worker starts."""
    a = latest_announcement(settings)
    if a is None:
        return None
    version = a["version"]
    manifest_b, weights = verify(a, fetch_artifact(settings, a))
    registry = Path(registry)
    staging = Path(tempfile.mkdtemp(dir=registry, prefix=".incoming-")) if registry.exists() else None
    if staging is None:
        registry.mkdir(parents=True)
        staging = Path(tempfile.mkdtemp(dir=registry, prefix=".incoming-"))
    try:
        (staging / "weights.safetensors").write_bytes(weights)
        (staging / "manifest.json").write_bytes(manifest_b)
        (registry / "versions").mkdir(exist_ok=True)
        target = registry / "versions" / version
        if not target.exists():
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    set_current(registry, version)  # the Predictor verifies it (checksum, config, finite weights)
    return version
