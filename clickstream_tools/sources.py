"""Training sources for `stream-app train`: the simulator, the Taobao slice, Diginetica, or a
JSON-lines file of schema-v1 events (each line validated exactly as the stream validates it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stream_app.records import InvalidEvent, parse_event

from .simulator import SimConfig, Storefront

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def simulated_events(users: int, events: int, seed: int = 7) -> tuple[list[dict], list[dict]]:
    """(events, truths) from the storefront simulator."""
    pairs = list(Storefront(SimConfig(users=users, events=events, seed=seed)).events())
    return [e for e, _ in pairs], [t for _, t in pairs]


def jsonl_events(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Valid events sorted by time, and how many lines were rejected."""
    out, bad = [], 0
    with open(path, "rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                e = parse_event(line.strip())
            except InvalidEvent:
                bad += 1
                continue
            out.append({k: getattr(e, k) for k in e.__slots__ if getattr(e, k) is not None})
    out.sort(key=lambda e: e["ts"])
    return out, bad
