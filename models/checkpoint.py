"""Checkpoints as plain data, and a model registry directory.

A version is a folder `versions/<id>/` holding `weights.safetensors` and `manifest.json`
(config, vocabularies, data description, metrics, sha256 of the weights). Nothing is unpickled.
Every file is written to a temporary name and renamed, so a reader never sees half a file.
`CURRENT` names the version in service.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
