"""Liveness (/health) and readiness (/ready) of a stream worker.

`Health` is pure: it is handed facts (the agent's state, the partitions of the input topic this
worker holds, each one's next position and high-water mark) and answers with a `Verdict`. It
remembers, per partition, when the position last moved (or the partition was caught up), which is
what a stall is measured from. The two small functions at the end read those facts from a running
Faust app; they have no side effects.

- live: the event loop answers (it serves the request) and neither the app nor the agent crashed
  or stopped. A failing liveness probe restarts the worker, so it says nothing about partitions.
- ready: live, the agent is running, at least one input partition is assigned, and no partition
  is stalled: lag > 0 but no progress for `stall_s` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from faust.exceptions import ConsumerNotStarted

from .offsets import committed_position


@dataclass(frozen=True)
class AgentStatus:
    running: bool  # started, not stopping, with a live actor
    crashed: str | None = None  # the crash reason, None when not crashed


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> int:
        return 200 if self.ok else 503

    def body(self) -> bytes:
        return orjson.dumps({"status": "ok" if self.ok else "fail", "reason": self.reason,
                             **self.details})


@dataclass
class _Watch:
    position: int
    lag: int
    progress_at: float  # clock time the position last moved, or the partition was caught up


class Health:
    def __init__(self, stall_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_s = stall_s
        self.clock = clock
        self._watch: dict[int, _Watch] = {}

    def observe(self, positions: Mapping[int, int], highwaters: Mapping[int, int | None]) -> None:
        """`positions`: partition -> next offset to handle, for every input partition held now
        (partitions missing from it were revoked and are forgotten). `highwaters`: partition ->
        the broker's high-water mark (None = not known yet: the lag stays as last seen)."""
        now = self.clock()
        for gone in self._watch.keys() - positions.keys():
            del self._watch[gone]
        for part, pos in positions.items():
            hw = highwaters.get(part)
            w = self._watch.get(part)
            lag = max(hw - pos, 0) if hw is not None else (w.lag if w else 0)
            if w is None:
                self._watch[part] = _Watch(pos, lag, now)
                continue
            if pos != w.position or lag == 0:
                w.progress_at = now
            w.position, w.lag = pos, lag

    def lags(self) -> dict[int, int]:
        return {part: w.lag for part, w in sorted(self._watch.items())}

    def stalled(self) -> dict[int, dict[str, float]]:
        """Partitions with lag > 0 and no progress for `stall_s`: partition -> lag, idle seconds."""
        now = self.clock()
        return {part: {"lag": w.lag, "idle_s": round(now - w.progress_at, 1)}
                for part, w in sorted(self._watch.items())
                if w.lag > 0 and now - w.progress_at >= self.stall_s}

    def liveness(self, agent: AgentStatus) -> Verdict:
        if agent.crashed is not None:
            return Verdict(False, f"agent crashed: {agent.crashed}")
        return Verdict(True, "event loop answering, agent not crashed")

    def readiness(self, assigned: Collection[int], agent: AgentStatus) -> Verdict:
        """`assigned`: the input partitions this worker holds now."""
        live = self.liveness(agent)
        if not live.ok:
            return live
        if not agent.running:
            return Verdict(False, "agent not running (starting, rebalancing or stopping)")
        if not assigned:
            return Verdict(False, "no input partitions assigned")
        parts = sorted(assigned)
        stalled = self.stalled()
        if stalled:
            return Verdict(False, f"{len(stalled)} partition(s) stalled: lag > 0 and no progress for "
                                  f"{self.stall_s:g} s", {"partitions": parts,
                                                            "stalled": {str(p): s for p, s in
                                                                        stalled.items()}})
        lags = self.lags()
        return Verdict(True, "partitions assigned and progressing",
                       {"partitions": parts, "lag": sum(lags.get(p, 0) for p in parts)})


# --- facts from a running Faust app (read-only) --------------------------------------------------

def agent_status(app: Any, agent_name: str) -> AgentStatus:
    agent = app.agents.get(agent_name)
    for svc, what in ((app, "app"), (agent, "agent")):
        if svc is not None and svc.crashed:
            return AgentStatus(False, f"{what}: {svc.crash_reason!r}")
    if agent is None or not agent.started or agent.should_stop:
        return AgentStatus(False)
    live = [a for a in agent._actors  # Faust keeps no public list; restarts replace crashed actors
            if not a.crashed and a.actor_task is not None and not a.actor_task.done()]
    return AgentStatus(bool(live))


def input_positions(app: Any, topic: str, handled: Mapping[int, int]
                    ) -> tuple[dict[int, int], dict[int, int | None]]:
    """(partition -> next offset to handle, partition -> high-water mark) for the partitions of
    `topic` assigned to this worker. `handled`: partition -> last offset the agent received; the
    committed position counts where it is ahead (a partition re-assigned since, or idle)."""
    positions: dict[int, int] = {}
    highwaters: dict[int, int | None] = {}
    try:
        assignment = app.consumer.assignment()
    except ConsumerNotStarted:
        return positions, highwaters
    for tp in assignment:
        if tp.topic != topic:
            continue
        last = handled.get(tp.partition)
        positions[tp.partition] = max(last + 1 if last is not None else 0,
                                      committed_position(app, tp) or 0)
        highwaters[tp.partition] = app.consumer.highwater(tp)
    return positions, highwaters
