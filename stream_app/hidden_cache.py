"""A device-resident cache of hot users' hidden states.

On a GPU, decoding a user's hidden state from table bytes and copying it to the device for every
event costs more than the GRU step itself. The cache keeps the newest hidden state of recently
seen users in one (layers, capacity, H) tensor on the device, LRU-evicted. The table stays the
source of truth: an entry is used only if it matches the state's event count and model version
(a rebalance, a restore or a weight swap makes it stale, never wrong).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

import torch


class HiddenCache:
    def __init__(self, capacity: int, layers: int, hidden: int, device: torch.device) -> None:
        self.capacity = capacity
        self.h = torch.zeros(layers, max(capacity, 1), hidden, device=device)
        self._slots: OrderedDict[Hashable, tuple[int, int, str]] = OrderedDict()  # user -> slot, n, version
        self._free = list(range(capacity - 1, -1, -1))
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._slots)

    def lookup(self, user: Hashable, n_events: int, version: str) -> int | None:
        """Slot of a valid entry, or None (counted as a miss)."""
        entry = self._slots.get(user)
        if entry is not None and entry[1] == n_events and entry[2] == version:
            self._slots.move_to_end(user)
            self.hits += 1
            return entry[0]
        self.misses += 1
        return None

    def store(self, users: list[Hashable], n_events: list[int], version: str, h_new: torch.Tensor) -> None:
        """Write h_new (layers, B, H) for `users` (distinct) into their slots."""
        if self.capacity == 0 or not users:
            return
        if len(users) > self.capacity:  # keep the newest; one call must not evict itself
            users, n_events = users[-self.capacity:], n_events[-self.capacity:]
            h_new = h_new[:, -self.capacity:]
        slots = []
        for u, n in zip(users, n_events, strict=True):
            entry = self._slots.pop(u, None)
            if entry is not None:
                slot = entry[0]
            elif self._free:
                slot = self._free.pop()
            else:
                _, (slot, _, _) = self._slots.popitem(last=False)  # evict least recently used
            self._slots[u] = (slot, n, version)
            slots.append(slot)
        idx = torch.tensor(slots, device=self.h.device)
        self.h.index_copy_(1, idx, h_new.to(self.h.dtype))

    def forget(self, user: Hashable) -> None:
        entry = self._slots.pop(user, None)
        if entry is not None:
            self._free.append(entry[0])
