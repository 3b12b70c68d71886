"""Checkpoints as plain data, and a model registry directory.

A version is a folder `versions/<id>/` holding `weights.safetensors` and `manifest.json`
(config, vocabularies, data description, metrics, sha256 of the weights). Nothing is unpickled.
Every file is written to a temporary name and renamed, so a reader never sees half a file.
`CURRENT` names the version in service; `history.jsonl` says who put each version there and why
(`promote`, `rollback`), `cycles.jsonl` what every retrain cycle measured and decided.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .data import Vocab
from .gru import ClickstreamGRU, GRUConfig

MANIFEST_FORMAT = 1


class CheckpointError(RuntimeError):
    pass


@dataclass
class LoadedModel:
    model: ClickstreamGRU
    version: str
    items: Vocab
    categories: Vocab
    manifest: dict[str, Any]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_version(registry: Path, model: ClickstreamGRU, items: Vocab, categories: Vocab,
                 data: dict[str, Any], metrics: dict[str, Any], make_current: bool | None = None) -> str:
    """Add a version to the registry; the first one (or make_current=True) becomes current."""
    registry.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=registry, prefix=".staging-"))
    weights = staging / "weights.safetensors"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights))
    sha = _sha256(weights)
    # sortable by time; the weights' hash says what it is; a nonce keeps re-saves apart
    version = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{sha[:8]}-{os.urandom(2).hex()}"
    manifest = {
        "format": MANIFEST_FORMAT, "version": version, "created_unix": time.time(),
        "config": model.cfg.to_dict(), "weights_sha256": sha,
        "vocab": {"items": list(items.ids), "item_buckets": items.buckets,
                  "categories": list(categories.ids), "category_buckets": categories.buckets},
        "data": data, "metrics": metrics,
    }
    _atomic_write(staging / "manifest.json", json.dumps(manifest).encode())
    (registry / "versions").mkdir(exist_ok=True)
    os.replace(staging, registry / "versions" / version)
    if make_current or (make_current is None and current_version(registry) is None):
        set_current(registry, version)
    return version


def set_current(registry: Path, version: str) -> None:
    if not (registry / "versions" / version / "manifest.json").exists():
        raise CheckpointError(f"no version {version} in {registry}")
    _atomic_write(registry / "CURRENT", version.encode())


def current_version(registry: Path) -> str | None:
    f = registry / "CURRENT"
    return f.read_text().strip() if f.exists() else None


def list_versions(registry: Path) -> list[str]:
    d = registry / "versions"
    return sorted(p.name for p in d.iterdir() if (p / "manifest.json").exists()) if d.exists() else []


def load_version(registry: Path, version: str | None = None, device: str = "cpu") -> LoadedModel:
    """Load a version (default: current), verifying the weights' checksum first."""
    version = version or current_version(registry)
    if version is None:
        raise CheckpointError(f"no model in {registry}: train one with `stream-app train`")
    folder = registry / "versions" / version
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except FileNotFoundError:
        raise CheckpointError(f"version {version} has no manifest in {folder}") from None
    weights = folder / "weights.safetensors"
    actual = _sha256(weights)
    if actual != manifest["weights_sha256"]:
        raise CheckpointError(f"checksum mismatch for {weights}: manifest says "
                              f"{manifest['weights_sha256'][:12]}..., file is {actual[:12]}...")
    cfg = GRUConfig.from_dict(manifest["config"])
    model = ClickstreamGRU(cfg)
    model.load_state_dict(load_file(str(weights), device="cpu"))
    model.to(device).eval()
    v = manifest["vocab"]
    return LoadedModel(model, version, Vocab(tuple(v["items"]), v["item_buckets"]),
                       Vocab(tuple(v["categories"]), v["category_buckets"]), manifest)


# --- registry for operators: verification, promotion history, rollback -----------------------
#
# `history.jsonl` (append-only, one JSON object a line) records every change of `CURRENT` made
# through `promote`/`rollback`: time, version, previous, actor ("retrain", "operator:<user>",
# "train"), reason, metrics, kind ("promote"|"rollback"). `cycles.jsonl` records every retrain
# cycle, promoted or not. Appends and `CURRENT` changes happen under an exclusive lock on
# `.lock`, so two operators (or an operator and the retrain worker) cannot interleave them; each
# line is written with one write() to an O_APPEND file and fsynced, so a reader never sees half
# a line. `CURRENT` keeps its meaning: the stream workers' poll reads it and nothing else.

HISTORY = "history.jsonl"
CYCLES = "cycles.jsonl"


@contextmanager
def _locked(registry: Path) -> Iterator[None]:
    registry.mkdir(parents=True, exist_ok=True)
    with open(registry / ".lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _append_line(path: Path, record: dict[str, Any]) -> None:
    line = (json.dumps(record, allow_nan=True, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a torn last line after a crash mid-write: skip it
                continue
    return out


def read_history(registry: Path) -> list[dict[str, Any]]:
    """Every promotion and rollback, oldest first."""
    return _read_lines(registry / HISTORY)


def read_cycles(registry: Path) -> list[dict[str, Any]]:
    """Every retrain cycle (metrics and decision), oldest first."""
    return _read_lines(registry / CYCLES)


def append_cycle(registry: Path, record: dict[str, Any]) -> None:
    with _locked(registry):
        _append_line(registry / CYCLES, {"time": time.time(), **record})


def verify_version(registry: Path, version: str) -> dict[str, Any]:
    """The manifest of `version` once its weights match their checksum, its config builds a model
    and every weight is finite; CheckpointError otherwise. Never unpickles anything."""
    lm = load_version(registry, version)
    for name, t in lm.model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"version {version}: non-finite values in {name}")
    return lm.manifest


def _record(registry: Path, kind: str, version: str, previous: str | None, actor: str,
            reason: str, metrics: dict[str, Any] | None) -> dict[str, Any]:
    entry = {"time": time.time(), "kind": kind, "version": version, "previous": previous,
             "actor": actor, "reason": reason, "metrics": metrics or {}}
    _append_line(registry / HISTORY, entry)
    return entry


def promote(registry: Path, version: str, actor: str, reason: str,
            metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Verify `version`, make it current, and record who did it and why. Returns the entry."""
    verify_version(registry, version)
    with _locked(registry):
        previous = current_version(registry)
        if previous == version:
            raise CheckpointError(f"version {version} is already in service")
        set_current(registry, version)
        return _record(registry, "promote", version, previous, actor, reason, metrics)


def _service_stack(registry: Path) -> list[str]:
    """The versions in service, oldest first, as promotions pushed and rollbacks popped them."""
    stack: list[str] = []
    for e in read_history(registry):
        if e.get("kind") == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != e["version"]:
                stack.append(e["version"])
        else:
            prev = e.get("previous")
            if prev is not None and (not stack or stack[-1] != prev):
                stack.append(prev)  # in service without a history entry (a registry's first)
            if not stack or stack[-1] != e["version"]:
                stack.append(e["version"])
    cur = current_version(registry)
    if cur is not None and (not stack or stack[-1] != cur):
        stack.append(cur)  # CURRENT set outside the history (set_current, an older registry)
    return stack


def rollback(registry: Path, actor: str, reason: str) -> dict[str, Any]:
    """Put back the version that was in service before the current one (repeatable: each
    rollback goes one promotion further back). The target is verified first."""
    with _locked(registry):
        stack = _service_stack(registry)
        if len(stack) < 2:
            raise CheckpointError(f"nothing to roll back to in {registry}: the history has no "
                                  "version in service before the current one")
        current, target = stack[-1], stack[-2]
    verify_version(registry, target)
    with _locked(registry):
        if current_version(registry) != current:
            raise CheckpointError("CURRENT changed while rolling back; look at the history and retry")
        set_current(registry, target)
        return _record(registry, "rollback", target, current, actor, reason, None)


def version_summaries(registry: Path) -> list[dict[str, Any]]:
    """One row per version, oldest first: version, created, current, promoted (times), test
    metrics as saved by training."""
    cur = current_version(registry)
    promoted: dict[str, list[float]] = {}
    for e in read_history(registry):
        promoted.setdefault(e["version"], []).append(e["time"])
    rows = []
    for v in list_versions(registry):
        m = json.loads((registry / "versions" / v / "manifest.json").read_text())
        rows.append({"version": v, "created_unix": m.get("created_unix"), "current": v == cur,
                     "promoted_unix": promoted.get(v, []),
                     "items": len(m["vocab"]["items"]), "metrics": m.get("metrics", {})})
    return rows


def show_version(registry: Path, version: str) -> dict[str, Any]:
    """A version's manifest without the vocabularies (their sizes instead), whether it is current,
    and the history entries that name it."""
    try:
        m = json.loads((registry / "versions" / version / "manifest.json").read_text())
    except FileNotFoundError:
        raise CheckpointError(f"no version {version} in {registry}") from None
    vocab = m.pop("vocab")
    m["vocab_sizes"] = {"items": len(vocab["items"]), "categories": len(vocab["categories"]),
                        "item_buckets": vocab["item_buckets"],
                        "category_buckets": vocab["category_buckets"]}
    m["current"] = current_version(registry) == version
    m["history"] = [e for e in read_history(registry)
                    if version in (e.get("version"), e.get("previous"))]
    return m
