"""The model in service: weights, vocabularies and version, on a device; loads and swaps them.

Also owns the translation from state to tensors (a user's window -> model inputs), because the
vocabularies that translation needs belong to the model version.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from models import features
from models.checkpoint import CheckpointError, LoadedModel, current_version, load_version
from models.features import SERVING_DEFAULTS, WindowLimits
from models.gru import ClickstreamGRU, Events
from models.train import pick_device

from .hidden_cache import HiddenCache
from .online_eval import item_hashes
from .state import UserState, WindowEvent

log = logging.getLogger(__name__)
_MEMO_LIMIT = 1_000_000  # id -> index memo entries (the vocabulary itself is fixed per version)


class Predictor:
    def __init__(self, registry: Path, device: str = "auto", top_k: int = 10,
                 cache_users: int = 100_000, version: str | None = None) -> None:
        """Serves `version` of the registry (default: its CURRENT)."""
        self.registry = Path(registry)
        self.device = pick_device(device)
        self.top_k = top_k
        self.cache_users = cache_users
        self.refused: set[str] = set()  # versions that failed to load: the CURRENT poll skips them
        self.install(self.prepare(version))

    def prepare(self, version: str | None, registry: Path | None = None) -> LoadedModel:
        """Load and verify a version (checksum, config, finite weights); raises CheckpointError.
        Touches nothing in service, so it runs in a thread while the agent goes on. `registry`:
        another registry directory (an artifact received from the model bus, not yet admitted)."""
        lm = load_version(registry or self.registry, version, device=str(self.device))
        bad = [n for n, t in lm.model.state_dict().items() if not bool(torch.isfinite(t).all())]
        if bad:
            raise CheckpointError(f"version {lm.version} has non-finite weights in {', '.join(bad[:5])}")
        return lm

    def install(self, lm: LoadedModel) -> None:
        """Serve a prepared version from the next batch on (the agent scores a batch without
        yielding to the event loop, so a swap always falls between two batches)."""
        self.model: ClickstreamGRU = lm.model
        self.version = lm.version
        self.items, self.categories = lm.items, lm.categories
        # published ids as hashes, for online evaluation (vocabulary index - 1 -> hash)
        self.item_hashes = item_hashes(lm.items.ids)
        self.manifest = lm.manifest
        cfg = self.model.cfg
        self.k = min(self.top_k, len(self.items))
        self.cache = HiddenCache(self.cache_users, cfg.layers, cfg.hidden, self.device)
        self._item_idx: dict[str | None, int] = {None: 0}
        self._cat_idx: dict[str | None, int] = {None: 0}
        log.info("model %s loaded on %s", self.version, self.device)

    def wanted_version(self) -> str | None:
        """The registry's current version when it differs from the one in service."""
        v = current_version(self.registry)
        return None if v is None or v == self.version or v in self.refused else v

    # --- state -> tensors ---------------------------------------------------------------------
    def item_index(self, item_id: str | None) -> int:
        i = self._item_idx.get(item_id)
        if i is None:
            if len(self._item_idx) > _MEMO_LIMIT:  # unseen ids keep coming: stay bounded
                self._item_idx = {None: 0}
            i = self._item_idx[item_id] = self.items.index(item_id)
        return i

    def category_index(self, cat: str | None) -> int:
        i = self._cat_idx.get(cat)
        if i is None:
            if len(self._cat_idx) > _MEMO_LIMIT:
                self._cat_idx = {None: 0}
            i = self._cat_idx[cat] = self.categories.index(cat)
        return i

    def step_inputs(self, states: Sequence[UserState], gaps: Sequence[float]) -> Events:
        """(B,) inputs for each state's newest event (models.features.encode), the state being
        observe()'s after that event: `gaps` as observe() measured them (0 where the event resets
        the user); the item window is the stored window's last W events; a `churn_profile`
        model also gets the profile the state keeps (events since the reset, newest - first
        time, action counts)."""
        W = self.model.cfg.window
        cur = [st.window[-1] for st in states]
        win = np.zeros((len(states), W), np.int64)
        for b, st in enumerate(states):
            tail = st.window[-W:]
            win[b, W - len(tail):] = [self.item_index(e.item_id) for e in tail]
        profile = None
        if self.model.cfg.churn_profile:
            counts = np.array([st.action_counts for st in states], np.float64).reshape(len(states), -1)
            age = np.array([st.last_seen - st.first_seen for st in states], np.float64)
            profile = features.profile(counts.sum(1), age, counts)
        return features.encode(
            np.array([e.action for e in cur], np.int64), win[:, -1],
            np.array([self.category_index(e.category_id) for e in cur], np.int64),
            np.asarray(gaps, np.float64), np.array([e.price for e in cur], np.float32), win, profile,
        ).to(self.device)

    @torch.no_grad()
    def rebuild(self, windows: Sequence[Sequence[WindowEvent]],
                limits: WindowLimits = SERVING_DEFAULTS) -> torch.Tensor:
        """Hidden states (layers, B, H) from scratch over each window (a version swap): the
        window is encoded as training encodes a sequence (models.features), from a zero state.
        Equal to the stepped state when the window holds everything since the user's last reset.
        (A `churn_profile` model's profile feeds only its churn head, not the state: forward
        derives one from the window, and its heads are not read here.)"""
        h = self.model.init_state(len(windows), self.device)
        by_len: dict[int, list[int]] = {}  # no padding: each length runs as its own batch
        for b, w in enumerate(windows):
            by_len.setdefault(len(w), []).append(b)
        for n, rows in by_len.items():
            _, _, h_n = self.model(self._sequence_inputs([windows[r] for r in rows], n, limits))
            h[:, rows] = h_n
        return h

    def _sequence_inputs(self, windows: Sequence[Sequence[WindowEvent]], n: int,
                         limits: WindowLimits) -> Events:
        item = np.array([[self.item_index(e.item_id) for e in w] for w in windows], np.int64)
        ts = np.array([[e.ts for e in w] for w in windows], np.float64)
        win = features.windows(torch.from_numpy(item), ts, np.full(len(windows), n),
                               self.model.cfg.window, limits)
        return features.encode(
            np.array([[e.action for e in w] for w in windows], np.int64), item,
            np.array([[self.category_index(e.category_id) for e in w] for w in windows], np.int64),
            features.gaps(ts), np.array([[e.price for e in w] for w in windows], np.float32), win,
        ).to(self.device)
