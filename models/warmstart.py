"""Warm starts: a challenger that begins as the champion, with room for the items it never saw.

Rule for the vocabulary (documented in the README's model lifecycle):
- every item and category the champion knew keeps its index, vanished ones included: an item
  out of stock this week is often back next week, and dropping it would renumber the table;
- items and categories new in the training part get new rows after the old ones, in order of
  frequency; a new item's row (and output bias) starts as the champion's hash-bucket row that
  item used to fall into, so the challenger starts from what the champion knew of it;
- hash-bucket rows move along (same bucket, new offset); every other weight is copied as is
  (a transition table too: it names known items only; training rebuilds it anyway).
The table only grows; it is bounded by the catalogue, and an operator can retrain from scratch
(`stream-app train`) to drop what is gone for good.
Pure PyTorch: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from .data import Vocab
from .gru import ClickstreamGRU


def extend_vocab(old: Vocab, keys: Iterable[str | None], min_count: int = 1) -> Vocab:
    """`old`'s ids in their order, then the unseen keys (count >= min_count) by frequency."""
    counts: dict[str, int] = {}
    known = set(old.ids)
    for k in keys:
        if k is not None and k not in known:
            counts[k] = counts.get(k, 0) + 1
    new = sorted((k for k, c in counts.items() if c >= min_count), key=lambda k: (-counts[k], k))
    return Vocab(old.ids + tuple(new), old.buckets)


def _grow_rows(old: torch.Tensor, old_vocab: Vocab, new_vocab: Vocab) -> torch.Tensor:
    """A table indexed like `new_vocab` (0, known 1..n, buckets) from one indexed like `old_vocab`."""
    n_old, n_new, b = len(old_vocab), len(new_vocab), old_vocab.buckets
    out = old.new_empty((1 + n_new + b, *old.shape[1:]))
    out[: 1 + n_old] = old[: 1 + n_old]
    out[1 + n_new:] = old[1 + n_old:]
    for j, key in enumerate(new_vocab.ids[n_old:], start=1 + n_old):
        out[j] = old[old_vocab.index(key)]  # the bucket the champion filed this item under
    return out


def widen(model: ClickstreamGRU, old_items: Vocab, old_cats: Vocab, items: Vocab,
          cats: Vocab) -> ClickstreamGRU:
    """A copy of `model` whose item/category tables are indexed by the extended vocabularies."""
    assert items.ids[: len(old_items)] == old_items.ids and cats.ids[: len(old_cats)] == old_cats.ids
    cfg = replace(model.cfg, n_items=len(items), n_categories=len(cats))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    state["item_emb.weight"] = _grow_rows(state["item_emb.weight"], old_items, items)
    state["item_bias"] = _grow_rows(state["item_bias"], old_items, items)
    state["category_emb.weight"] = _grow_rows(state["category_emb.weight"], old_cats, cats)
    for name in ("trans_items", "trans_probs"):  # known items only: the old indices stay valid
        if name in state:
            state[name] = _grow_rows(state[name], old_items, items)
    new = ClickstreamGRU(cfg)
    new.load_state_dict(state)
    return new


@dataclass
class WarmStart:
    model: ClickstreamGRU
    items: Vocab
    categories: Vocab

    def extended(self, train_events: Sequence[Mapping[str, Any]],
                 min_item_count: int = 1) -> tuple[ClickstreamGRU, Vocab, Vocab]:
        """(initial challenger, its item vocabulary, its category vocabulary)."""
        items = extend_vocab(self.items, (e.get("item_id") for e in train_events), min_item_count)
        cats = extend_vocab(self.categories, (e.get("category_id") for e in train_events))
        return widen(self.model, self.items, self.categories, items, cats), items, cats
