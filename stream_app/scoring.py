"""Pure scoring: (predictor, states, events) -> (new states, predictions).

A micro-batch may hold several events of one user (a burst, or a backlog after a restart). Each
user's new events are applied in order as one short sequence (split where an idle reset starts
the user afresh): sequences of the same length form a group, and each group is a single call of
the model's full-sequence forward from the users' current hidden states (cuDNN on a GPU).
Running a sequence from h is exactly stepping through it event by event (tests/test_model.py
proves the two agree), so this is the incremental one-step-per-event update, done in as few device
calls as possible, however skewed the traffic.

A user's hidden state comes from the device cache when it is current, else from the state
itself, else (a new model version) it is rebuilt from the user's window; a brand-new user starts
from zeros, and so does a user whose event comes more than `window_seconds` after their newest
one (an idle reset: the idle sweep would have deleted the row, and training starts a new sequence
there; models.features defines the inputs on every path). Replayed events (already applied) are
scored as the prediction that followed the user's latest event, and change nothing. No I/O: the
agent reads and writes the table and sends the results.

Online evaluation (online_eval.py): each user's new state keeps the prediction that followed their
newest applied event, and the batch result pairs every applied event with the prediction that
preceded it (from the stored state for the user's first event in the batch, else from the batch
itself), ready to be scored. Probabilities are rounded to float16 on both paths, so the figures do
not depend on how events fall into batches.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from models import features
from models.features import WindowLimits
from models.gru import Events, Outputs

from .online_eval import Kept, Pairs, item_hash, stack_kept
from .predictor import Predictor
from .records import ACTION_INDEX, Event
from .state import Observation, UserState, WindowEvent, observe


@dataclass
class Prediction:
    """One event's prediction: a row of `Predictions`, for tests and tools."""
    event: Event
    model_version: str
    action_probs: np.ndarray  # (A,)
    churn_probability: float
    top_items: list[tuple[str, float]]  # (item_id, probability), best first
    replayed: bool


@dataclass
class Predictions:
    """A batch's predictions, one row per input event in input order. Columns, not objects:
    the agent turns the rows into payloads in one pass (`rows`)."""
    events: Sequence[Event]
    model_version: str
    action_probs: np.ndarray  # (N, A) float32
    churn: np.ndarray  # (N,) float32
    top_index: np.ndarray  # (N, K) vocabulary indices, best first
    top_probs: np.ndarray  # (N, K) float32
    replayed: np.ndarray  # (N,) bool
    item_ids: Sequence[str]  # vocabulary index - 1 -> published item id

    @classmethod
    def empty(cls, events: Sequence[Event], version: str, n_actions: int, k: int,
              item_ids: Sequence[str]) -> Predictions:
        n = len(events)
        return cls(events, version, np.zeros((n, n_actions), np.float32), np.zeros(n, np.float32),
                   np.zeros((n, k), np.int64), np.zeros((n, k), np.float32), np.zeros(n, bool), item_ids)

    def __len__(self) -> int:
        return len(self.events)

    def rows(self) -> Iterator[tuple[list[float], float, list[str], list[float], bool]]:
        """(action probabilities, churn probability, top item ids, their probabilities, replayed)
        per event, as plain Python values (cheap to serialise)."""
        ids = self.item_ids
        tops = [[ids[j - 1] for j in row] for row in self.top_index.tolist()]
        return zip(self.action_probs.tolist(), self.churn.tolist(), tops, self.top_probs.tolist(),
                   self.replayed.tolist(), strict=True)

    def __getitem__(self, n: int) -> Prediction:
        ids = self.item_ids
        top = [(ids[j - 1], v) for j, v in zip(self.top_index[n].tolist(), self.top_probs[n].tolist(),
                                               strict=True)]
        return Prediction(self.events[n], self.model_version, self.action_probs[n],
                          float(self.churn[n]), top, bool(self.replayed[n]))

    def __iter__(self) -> Iterator[Prediction]:
        return (self[n] for n in range(len(self)))


@dataclass
class BatchResult:
    predictions: Predictions  # one row per input event, in input order
    states: dict[Hashable, UserState]  # the final state of every row in the batch
    stats: dict[str, int]
    online: Pairs | None = None  # applied events with the prediction that preceded them


@dataclass
class _UserRun:
    prev: UserState | None
    applied: list[tuple[int, UserState, Observation]]  # (event index, state after it, obs)
    replayed: list[tuple[int, UserState, Observation]]


def _gather(p: Predictor, users: list[Hashable], prev: list[UserState | None],
            stats: dict[str, int], limits: WindowLimits) -> torch.Tensor:
    """(layers, B, H) hidden states before this batch."""
    m = p.model
    h = m.init_state(len(users), p.device)
    hit_pos, hit_slot, host_pos, host_rows, rebuild_pos = [], [], [], [], []
    for b, (u, st) in enumerate(zip(users, prev, strict=True)):
        if st is None or st.n_events == 0:
            continue
        if st.model_version == p.version and st.hidden is not None:
            slot = p.cache.lookup(u, st.n_events, p.version)
            if slot is not None:
                hit_pos.append(b)
                hit_slot.append(slot)
            else:
                host_pos.append(b)
                host_rows.append(st.hidden)
        else:
            rebuild_pos.append(b)
    if hit_pos:
        h[:, hit_pos] = p.cache.h[:, hit_slot]
    if host_pos:
        rows = torch.from_numpy(np.stack(host_rows)).view(len(host_pos), m.cfg.layers, m.cfg.hidden)
        h[:, host_pos] = rows.transpose(0, 1).to(p.device)
    if rebuild_pos:
        h[:, rebuild_pos] = p.rebuild([prev[b].window for b in rebuild_pos],  # type: ignore[union-attr]
                                      limits)
        stats["rebuilt"] += len(rebuild_pos)
    return h


def _reshape(x: Events, B: int, T: int) -> Events:
    return Events(**{f.name: getattr(x, f.name).reshape(B, T, *getattr(x, f.name).shape[1:])
                     for f in fields(x)})


def _cat(outs: list[Outputs]) -> Outputs:
    if len(outs) == 1:
        return outs[0]
    return Outputs(*(torch.cat([getattr(o, f.name) for o in outs]) for f in fields(Outputs)))


class _Readout:
    """Fills rows of `Predictions` from model outputs."""

    def __init__(self, p: Predictor, preds: Predictions) -> None:
        self.p, self.preds = p, preds

    def __call__(self, idx: list[int], out: Outputs, rq: torch.Tensor, window: torch.Tensor,
                 replayed: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fills the rows of events `idx`; returns their action probabilities (n, A), churn
        probabilities (n,) and top-K vocabulary indices (n, K)."""
        p, preds = self.p, self.preds
        probs = torch.softmax(out.action_logits, -1).cpu().numpy()
        churn = torch.sigmoid(out.churn_logit).cpu().numpy()
        top_v, top_i = p.model.top_items(out, rq, window, p.k, len(p.items))
        top = top_i.cpu().numpy()
        preds.action_probs[idx] = probs
        preds.churn[idx] = churn
        preds.top_index[idx] = top
        preds.top_probs[idx] = top_v.cpu().numpy()
        preds.replayed[idx] = replayed
        return probs, churn, top


def _online(p: Predictor, events: Sequence[Event], runs: dict[Hashable, _UserRun], users: list[Hashable],
            idx: list[int], probs: np.ndarray, churn: np.ndarray,
            top: np.ndarray) -> tuple[Pairs, dict[Hashable, Kept]]:
    """Pairs (preceding prediction, applied event) and each user's newest kept prediction.
    `idx[r]` is the event whose prediction is row r of `probs`/`churn`/`top`."""
    row = np.full(len(events), -1, np.int64)
    row[idx] = np.arange(len(idx))
    probs16 = probs.astype(np.float16)
    hashes = p.item_hashes[top - 1]  # (n, K): published ids as hashes
    from_state: list[Kept] = []
    nxt_state: list[int] = []
    prev_rows: list[int] = []  # in-batch pairs: row of the preceding prediction ...
    nxt_batch: list[int] = []  # ... and the event that followed it
    kept: dict[Hashable, Kept] = {}
    for u in users:
        steps = runs[u].applied
        if not steps:
            continue
        prev = runs[u].prev
        if prev is not None and prev.last_prediction is not None:
            from_state.append(prev.last_prediction)
            nxt_state.append(steps[0][0])
        for (a, _, _), (b, _, _) in zip(steps, steps[1:], strict=False):
            prev_rows.append(int(row[a]))
            nxt_batch.append(b)
        i = steps[-1][0]
        r = int(row[i])
        kept[u] = Kept(p.version, events[i].ts, probs16[r], float(churn[r]), hashes[r])
    pr = np.asarray(prev_rows, np.int64)
    v_s, ts_s, a_s, c_s, it_s, n_s = stack_kept(from_state)
    k = max(it_s.shape[1], hashes.shape[1])
    items = np.zeros((len(from_state) + len(pr), k), np.uint32)
    items[:len(from_state), :it_s.shape[1]] = it_s
    items[len(from_state):, :hashes.shape[1]] = hashes[pr]
    acts = probs16[pr].astype(np.float32)
    if from_state:
        acts = np.concatenate([a_s, acts])
    nxt = [events[i] for i in nxt_state + nxt_batch]
    pairs = Pairs(
        versions=v_s + [p.version] * len(pr),
        pred_ts=np.concatenate([ts_s, np.array([events[idx[r]].ts for r in prev_rows], np.float64)]),
        action_probs=acts,
        churn=np.concatenate([c_s, churn[pr]]),
        items=items,
        n_items=np.concatenate([n_s, np.full(len(pr), hashes.shape[1], np.int64)]),
        next_ts=np.array([e.ts for e in nxt], np.float64),
        next_action=np.array([ACTION_INDEX[e.action] for e in nxt], np.int64),
        next_item=np.array([item_hash(e.item_id) if e.item_id is not None else 0 for e in nxt],
                           np.uint32),
        has_item=np.array([e.item_id is not None for e in nxt], bool),
    )
    return pairs, kept


def _newest_gap(window: Sequence[WindowEvent]) -> float:
    """The newest event's input gap, as far as the window tells (exact unless the event that set
    the user's newest time has left the window). A reset event's window holds only itself: 0."""
    return float(features.gaps(np.array([e.ts for e in window]))[-1]) if len(window) > 1 else 0.0


@torch.inference_mode()
def score_batch(p: Predictor, events: Sequence[Event], states: dict[Hashable, UserState | None],
                limits: WindowLimits, row_keys: Sequence[Hashable] | None = None,
                offsets: Sequence[int] | None = None) -> BatchResult:
    """`row_keys[i]` names the state row event i belongs to (default: its user id; the worker uses
    (partition, user id)); `offsets[i]` is its input offset in that row's partition, or -1."""
    stats = {"rebuilt": 0, "replayed": 0, "late": 0, "groups": 0}
    keys = row_keys if row_keys is not None else [e.user_id for e in events]
    runs: dict[Hashable, _UserRun] = {}
    for i, e in enumerate(events):  # window/profile transitions, in each row's arrival order
        row = keys[i]
        r = runs.get(row)
        if r is None:
            r = runs[row] = _UserRun(states.get(row), [], [])
        cur = r.applied[-1][1] if r.applied else r.prev
        st, ob = observe(cur, e, limits, -1 if offsets is None else offsets[i])
        (r.replayed if ob.replayed else r.applied).append((i, st, ob))
        stats["late"] += ob.late
    users = list(runs)
    # a user's applied events run as segments: a new one starts at an idle reset (models.features)
    segs: dict[int, list[tuple[int, int, int]]] = {}  # length -> [(user column, start, stop)]
    fresh: set[int] = set()  # users whose first applied event in this batch resets them
    for b, u in enumerate(users):
        steps = runs[u].applied
        cuts = [k for k, (_, _, ob) in enumerate(steps) if ob.reset]
        if cuts and cuts[0] == 0:
            fresh.add(b)
        bounds = [0, *(k for k in cuts if k > 0), len(steps)]
        for a, z in zip(bounds, bounds[1:], strict=False):
            if z > a:
                segs.setdefault(z - a, []).append((b, a, z))
    h0 = _gather(p, users, [None if b in fresh else runs[u].prev for b, u in enumerate(users)],
                 stats, limits)
    preds = Predictions.empty(events, p.version, p.model.cfg.n_actions, p.k, p.items.ids)
    readout = _Readout(p, preds)
    final: dict[Hashable, UserState] = {}
    h_fin = h0.clone()  # each user's hidden state after this batch
    heads: list[tuple[list[int], Outputs, torch.Tensor, torch.Tensor]] = []
    for T, group in segs.items():
        stats["groups"] += 1
        cols = [b for b, _, _ in group]
        steps = [s for b, a, z in group for s in runs[users[b]].applied[a:z]]  # row-major (B, T)
        gaps = [0.0 if ob.reset else ob.gap_s for _, _, ob in steps]
        x = _reshape(p.step_inputs([st for _, st, _ in steps], gaps), len(group), T)
        h_in = h0[:, cols]
        later = [j for j, (_, a, _) in enumerate(group) if a > 0]
        if later:
            h_in[:, later] = 0.0  # a segment after a reset starts from zeros
        out, rq, h_n = p.model(x, h_in)
        heads.append(([i for i, _, _ in steps], out.map(lambda t: t.flatten(0, 1)), rq.flatten(0, 1),
                      x.window.flatten(0, 1)))
        last_seg = [j for j, (b, _, z) in enumerate(group) if z == len(runs[users[b]].applied)]
        if not last_seg:
            continue
        ends = [cols[j] for j in last_seg]
        h_last = h_n[:, last_seg] if len(last_seg) < len(group) else h_n
        h_fin[:, ends] = h_last
        h_host = h_last.transpose(0, 1).reshape(len(ends), -1).cpu().numpy()
        keep_u, keep_n = [], []
        for j, b in enumerate(ends):
            last = runs[users[b]].applied[-1][1]
            final[users[b]] = replace(last, hidden=h_host[j].copy(), model_version=p.version)
            keep_u.append(users[b])
            keep_n.append(last.n_events)
        p.cache.store(keep_u, keep_n, p.version, h_last)
    online: Pairs | None = None
    if heads:  # one readout for every group: the catalogue-wide top-K is the costly part
        idx = [i for h in heads for i in h[0]]
        probs, churn, top = readout(idx, _cat([h[1] for h in heads]), torch.cat([h[2] for h in heads]),
                                    torch.cat([h[3] for h in heads]), False)
        online, kept = _online(p, events, runs, users, idx, probs, churn, top)
        for u, k in kept.items():
            final[u] = replace(final[u], last_prediction=k)
    replays = [(b, i) for b, u in enumerate(users) for i, _, _ in runs[u].replayed]
    if replays:
        # already applied: they get the prediction that followed the user's latest event (the
        # heads on the current hidden state), and nothing moves
        stats["replayed"] = len(replays)
        cols = [b for b, _ in replays]
        now = [final.get(users[b]) or runs[users[b]].prev for b in cols]
        # the newest event's gap as observe() gave it, from what the window still holds
        gaps = [_newest_gap(st.window) for st in now]  # type: ignore[union-attr]
        x = p.step_inputs(now, gaps)  # type: ignore[arg-type]
        out, rq = p.model.readout(h_fin[:, cols], x)
        readout([i for _, i in replays], out, rq, x.window, True)
    for u in users:
        prev = runs[u].prev
        if u not in final and prev is not None:
            final[u] = prev  # only replays: unchanged
    return BatchResult(preds, final, stats, online)
