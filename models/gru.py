"""The clickstream GRU: one model, two entry points that agree.

- `step(x, h) -> (outputs, h_new)`: a batch of users, one event each. This is what the stream runs.
- `forward(seq)`: padded batches of whole sequences (cuDNN on GPU). This is what training runs.

Both go through the same `nn.GRU` and the same heads, so offline numbers are online numbers.

Inputs per event: action, item (vocabulary index; unseen items hash into buckets), category, the
log-scaled gap since the user's previous event, and price when present. Heads on the GRU output:
next action type, churn, and next item. The next-item head is a mixture (as in RepeatNet):
an "explore" softmax over the whole catalogue with tied input/output embeddings, and a "repeat"
distribution over the items in the user's own recent window (the window the stream keeps
anyway), weighted by a learned gate. Shoppers return to what they just saw, and a catalogue-only
softmax ranks those items poorly. Optionally (`transition_k`) the explore part also takes a share,
chosen on validation, from a table of what followed the newest item (or, by recency, each item
in the window) in training.

Pure PyTorch: no I/O, no environment, no printing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from operator import itemgetter

import torch
import torch.nn.functional as F
from torch import Tensor, nn

N_ACTIONS = 6  # the schema's actions, in stream_app.records.ACTIONS order
# gap buckets (seconds): what happens next depends on the gap non-monotonically (a burst of
# clicks, a pause to read, a new session), which one scalar through one tanh layer learns slowly
GAP_EDGES_S = (1.0, 10.0, 60.0, 300.0, 1800.0, 3 * 3600.0, 86400.0)
PROFILE_DIM = 2 + N_ACTIONS  # Events.profile columns, see profile_inputs
GATE_STATS_DIM = 5  # window_stats columns


@dataclass(frozen=True)
class GRUConfig:
    n_items: int  # known items; index 0 is "no item", 1..n_items known, then hash buckets
    n_categories: int
    item_buckets: int = 1024  # unseen items hash here: never crash, rarely alias
    category_buckets: int = 64
    n_actions: int = N_ACTIONS
    emb_dim: int = 128
    hidden: int = 128
    layers: int = 1
    dropout: float = 0.25  # on input embeddings and on the GRU output
    window: int = 20  # items of the user's recent history the repeat head can score
    churn_horizon_s: float = 1800.0
    repeat_flag: bool = False  # input flag: is this event's item already in the window?
    # also embed (action, gap bucket) pairs (GAP_EDGES_S): "carted 5 s after the last click" and
    # "carted after a day away" are different situations, whatever the rest of the history says
    gap_buckets: bool = False
    # next-item readout (defaults keep older checkpoints loadable; benchmarks turn them on):
    # attend over the user's window (item embeddings + distance-from-newest positions) next to
    # the GRU state, as NARM/STAMP/SR-GNN read a session out
    window_attention: bool = False
    # cosine scoring: L2-normalised item query and output item embeddings, logits scaled by
    # `cosine_scale` (NISER, SGNN-HN): popular items stop winning on embedding norm alone
    cosine: bool = False
    cosine_scale: float = 16.0
    repeat_head: bool = True  # False: no repeat channel (gate fixed at 0), for ablations
    # the newest event's item embedding straight into the next-item query, next to the GRU state
    # (STAMP's short-term memory): what follows an item depends on exactly which item it was, and
    # the GRU sees it only through input dropout and a 128 -> H squeeze
    last_item_readout: bool = False
    # the user's recency/frequency profile (`Events.profile`, see `profile_inputs`: what the
    # stream's UserState keeps) and the current action next to the GRU state in the churn head:
    # a GRU counts tens of events poorly, and "how many events, over how long" is most of what
    # predicts a return. Training starts this head at the regression on those inputs.
    churn_profile: bool = False
    # the repeat gate also reads the window's statistics (`window_stats`: its length, how many of
    # its items are repeats, whether the newest item is one): whether the next click returns to
    # something already seen is mostly a property of the session so far, which the GRU state
    # (behind dropout) carries poorly. Measured on Diginetica test rows, a gate on the state alone
    # ranks repeat rows above new ones with AUC 0.59; the window's repeat count alone, 0.64.
    gate_window_stats: bool = False
    # a first-order prior over the next item (GCE-GNN's global item graph, as a lookup instead of
    # a GNN per event): each known item's `transition_k` most frequent successors in the training
    # data (`models.data.item_transitions`), mixed into the explore distribution with a weight
    # chosen on validation after training (`models.train.calibrate_transitions`). The GRU ranks
    # items it has learned well; the table adds what was seen to follow this exact item. 0: none
    transition_k: int = 0
    # whose neighbours: 0, the newest item's only; else every window item's, the newest counting
    # 1, the one before it `transition_decay`, then its square... (items the shopper saw a few
    # clicks ago still say where the session is going, as in session-KNN's recency weights).
    # Diginetica, post hoc on one fully trained model: 0.6 ranks +0.6 P@20 above 0 on test rows
    transition_decay: float = 0.0

    @property
    def item_vocab(self) -> int:
        return 1 + self.n_items + self.item_buckets

    @property
    def category_vocab(self) -> int:
        return 1 + self.n_categories + self.category_buckets

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GRUConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Events:
    """A batch of events. Shapes: (B,) for `step`, (B, T) for `forward`; window adds a last W dim.

    `window` holds the item indices of the user's last W events up to and including this one,
    oldest first, left-padded with 0.
    """

    action: Tensor  # long
    item: Tensor  # long, 0 = none (search)
    category: Tensor  # long, 0 = none
    log_gap: Tensor  # float, log1p(seconds since the user's previous event), 0 for the first
    log_price: Tensor  # float, log1p(price), 0 when absent
    has_price: Tensor  # float, 0/1
    window: Tensor  # long (..., W)
    # float (..., PROFILE_DIM): `profile_inputs` of the user after this event; read only with
    # `churn_profile`. Left out, it is an empty (..., 0) tensor (every field stays a tensor), and
    # `forward` from a fresh start (h0=None) derives it from the sequence itself.
    profile: Tensor = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.profile is None:
            self.profile = self.log_gap.new_zeros((*self.log_gap.shape, 0))

    def to(self, device: torch.device | str) -> Events:
        return Events(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


@dataclass
class Outputs:
    action_logits: Tensor  # (..., A)
    churn_logit: Tensor  # (...)
    item_query: Tensor  # (..., E): the next-item head's query vector
    repeat_gate: Tensor  # (...), probability mass given to the window

    def map(self, fn: Callable[[Tensor], Tensor]) -> Outputs:
        """The same outputs with `fn` applied to each field (reshape, slice, move)."""
        return Outputs(*(fn(getattr(self, f.name)) for f in fields(self)))


class ClickstreamGRU(nn.Module):
    gap_edges: Tensor  # (len(GAP_EDGES_S),) log1p of the gap bucket edges, a buffer
    # with transition_k, buffers saved with the weights: (item_vocab, K) neighbour indices (int32)
    # and probabilities, and their weight in the explore distribution (a scalar)
    trans_items: Tensor
    trans_probs: Tensor
    trans_weight: Tensor

    def __init__(self, cfg: GRUConfig) -> None:
        super().__init__()
        self.cfg = cfg
        E, H = cfg.emb_dim, cfg.hidden
        self.item_emb = nn.Embedding(cfg.item_vocab, E, padding_idx=0)
        self.action_emb = nn.Embedding(cfg.n_actions, 16)
        self.category_emb = nn.Embedding(cfg.category_vocab, 16, padding_idx=0)
        gap_dim = 8 if cfg.gap_buckets else 0
        if cfg.gap_buckets:
            self.gap_emb = nn.Embedding((len(GAP_EDGES_S) + 1) * cfg.n_actions, gap_dim)
            self.register_buffer("gap_edges", torch.log1p(torch.tensor(GAP_EDGES_S)), persistent=False)
        self.input_proj = nn.Linear(E + 16 + 16 + 3 + int(cfg.repeat_flag) + gap_dim, E)
        self.drop = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(E, H, num_layers=cfg.layers, batch_first=True)
        self.action_head = nn.Linear(H, cfg.n_actions)
        # with the profile, the churn head also sees the current action (one-hot): together they
        # are the recency/frequency regression's inputs, so the head can start at its solution
        self.churn_head = nn.Linear(H + 1 + (PROFILE_DIM + cfg.n_actions if cfg.churn_profile else 0), 1)
        read = H
        if cfg.window_attention:
            self.att_state = nn.Linear(H, E)
            self.att_item = nn.Linear(E, E, bias=False)
            self.att_pos = nn.Parameter(torch.zeros(cfg.window, E))  # slot W-1 is the newest event
            self.att_v = nn.Linear(E, 1, bias=False)
            read = H + E
        if cfg.last_item_readout:
            read += E
        self.item_query = nn.Linear(read, E)  # explore: scored against the tied item embeddings
        self.item_bias = nn.Parameter(torch.zeros(cfg.item_vocab))
        self.repeat_query = nn.Linear(H, E)
        self.recency = nn.Parameter(torch.zeros(cfg.window))  # bias by position in the window
        self.gate = nn.Linear(H + (GATE_STATS_DIM if cfg.gate_window_stats else 0), 1)
        if cfg.transition_k:  # filled after training (set_transitions); empty rows mix nothing in
            size = (cfg.item_vocab, cfg.transition_k)
            self.register_buffer("trans_items", torch.zeros(size, dtype=torch.int32))
            self.register_buffer("trans_probs", torch.zeros(size))
            self.register_buffer("trans_weight", torch.zeros(()))
        nn.init.normal_(self.item_emb.weight, std=1.0 / math.sqrt(E))
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    # --- state ------------------------------------------------------------------------------
    def init_state(self, batch: int, device: torch.device | str | None = None) -> Tensor:
        """(layers, B, H) zeros: the state of a user with no history."""
        return torch.zeros(self.cfg.layers, batch, self.cfg.hidden, device=device)

    # --- shared pieces ----------------------------------------------------------------------
    def _embed(self, x: Events) -> Tensor:
        cols = [x.log_gap, x.log_price, x.has_price]
        if self.cfg.repeat_flag:  # shoppers act on what they already looked at
            item = x.item.unsqueeze(-1)
            cols.append(((x.window[..., :-1] == item) & (item != 0)).any(-1).float())
        feats = torch.stack(cols, dim=-1).float()
        parts = [self.item_emb(x.item), self.action_emb(x.action), self.category_emb(x.category), feats]
        if self.cfg.gap_buckets:
            bucket = torch.bucketize(x.log_gap.float().contiguous(), self.gap_edges)
            parts.append(self.gap_emb(bucket * self.cfg.n_actions + x.action))
        z = torch.cat(parts, dim=-1)
        return self.drop(torch.tanh(self.input_proj(z)))

    def _window_context(self, o: Tensor, window: Tensor) -> Tensor:
        """(..., E): additive attention of the state `o` (..., H) over the window's items, keyed
        by item and by distance from the newest event (empty slots excluded)."""
        w_emb = self.item_emb(window)  # (..., W, E)
        keys = self.att_item(w_emb) + self.att_pos + self.att_state(o).unsqueeze(-2)
        scores = self.att_v(torch.sigmoid(keys)).squeeze(-1).masked_fill(window == 0, float("-inf"))
        att = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)  # all-empty window -> 0
        return (att.unsqueeze(-1) * w_emb).sum(-2)

    def _heads(self, o: Tensor, x: Events) -> tuple[Outputs, Tensor]:
        o = self.drop(o)
        churn_in = [o, x.log_gap.unsqueeze(-1).float()]
        if self.cfg.churn_profile:
            if x.profile.shape[-1] != PROFILE_DIM:
                raise ValueError("this model's churn head reads Events.profile (churn_profile=True)")
            churn_in += [x.profile.float(), F.one_hot(x.action, self.cfg.n_actions).float()]
        read = o
        if self.cfg.window_attention:
            read = torch.cat([o, self.drop(self._window_context(o, x.window))], dim=-1)
        if self.cfg.last_item_readout:
            read = torch.cat([read, self.item_emb(x.item)], dim=-1)
        q = self.item_query(read)
        if self.cfg.cosine:
            q = F.normalize(q, dim=-1) * self.cfg.cosine_scale
        return Outputs(
            action_logits=self.action_head(o),
            churn_logit=self.churn_head(torch.cat(churn_in, dim=-1)).squeeze(-1),
            item_query=q,
            repeat_gate=self._repeat_gate(o, x),
        ), self.repeat_query(o)

    def _repeat_gate(self, o: Tensor, x: Events) -> Tensor:
        """(...) the probability mass the repeat channel gets (0 without one)."""
        if not self.cfg.repeat_head:
            return o.new_zeros(o.shape[:-1])
        if self.cfg.gate_window_stats:
            o = torch.cat([o, window_stats(x.window, x.item)], dim=-1)
        return torch.sigmoid(self.gate(o).squeeze(-1))

    # --- entry points -----------------------------------------------------------------------
    def step(self, x: Events, h: Tensor) -> tuple[Outputs, Tensor, Tensor]:
        """One event per user. x fields (B,), window (B, W); h (layers, B, H).

        Returns (outputs, repeat_query (B, E), h_new). `h` is not modified.
        """
        z = self._embed(x).unsqueeze(1)  # (B, 1, E)
        o, h_new = self.gru(z, h.contiguous())
        out, rq = self._heads(o.squeeze(1), x)
        return out, rq, h_new

    def forward(self, x: Events, h0: Tensor | None = None) -> tuple[Outputs, Tensor, Tensor]:
        """Whole sequences. x fields (B, T), window (B, T, W). Right-padding is harmless: the
        GRU is causal, so padded steps never influence real ones (mask them in the loss).
        h0=None: the sequences start the users afresh (zero state; the profile, when the model
        reads one and x has none, is then a function of the sequence: `sequence_profile`)."""
        z = self._embed(x)  # (B, T, E)
        if h0 is None:
            h0 = self.init_state(z.shape[0], z.device)
            if self.cfg.churn_profile and x.profile.shape[-1] == 0:
                x = replace(x, profile=sequence_profile(x.action, x.log_gap, self.cfg.n_actions))
        o, h_n = self.gru(z, h0)
        out, rq = self._heads(o, x)
        return out, rq, h_n

    def readout(self, h: Tensor, x: Events) -> tuple[Outputs, Tensor]:
        """Heads on a state h (layers, B, H) whose latest event was x (B,): the prediction that
        followed x, without stepping again. Returns (outputs, repeat_query)."""
        return self._heads(h[-1], x)

    # --- next-item distribution -------------------------------------------------------------
    @torch.no_grad()
    def set_transitions(self, items: Tensor, probs: Tensor, weight: float = 0.0) -> None:
        """Install the successor table (item_vocab, transition_k) each: `items` indices, `probs`
        their probabilities (rows sum to 1, or 0 for an item with no successors), and the weight
        the table gets in the explore distribution."""
        self.trans_items.copy_(items)
        self.trans_probs.copy_(probs)
        self.trans_weight.fill_(weight)

    def _transitions(self, window: Tensor, weight: Tensor | float | None = None) -> tuple[Tensor, Tensor]:
        """The window's weighted neighbours: indices (..., n) and mass (..., n), which sums to
        `weight` (default `trans_weight`), or to 0 when no item in play has neighbours. With
        `transition_decay` 0 only the newest item is in play (n = K); else every window slot is
        (n = W * K), sharing the weight as decay**distance from the newest among the slots whose
        item has neighbours."""
        w = self.trans_weight if weight is None else weight
        decay = self.cfg.transition_decay
        if not decay:
            newest = window[..., -1]
            return self.trans_items[newest].long(), self.trans_probs[newest] * w
        probs = self.trans_probs[window]  # (..., W, K)
        W = window.shape[-1]
        powers = decay ** torch.arange(W - 1, -1, -1, device=window.device, dtype=probs.dtype)
        share = powers * (probs.sum(-1) > 0)  # (..., W): empty slots and unknown items get 0
        share = share / share.sum(-1, keepdim=True).clamp_min(1e-30)
        return self.trans_items[window].long().flatten(-2), (probs * (share * w).unsqueeze(-1)).flatten(-2)

    def mix_transitions(self, explore: Tensor, window: Tensor, weight: float | None = None) -> Tensor:
        """The explore distribution (..., V), in place, with the window's neighbours mixed in
        at `weight` (default: the installed one; unchanged without a transition table)."""
        if not self.cfg.transition_k:
            return explore
        idx, mass = self._transitions(window, weight)
        return explore.mul_(1 - mass.sum(-1, keepdim=True)).scatter_add_(-1, idx, mass)

    def _repeat_attention(self, rq: Tensor, window: Tensor) -> Tensor:
        """Softmax over window positions (..., W); empty slots get 0."""
        w_emb = self.item_emb(window)  # (..., W, E)
        scores = (w_emb * rq.unsqueeze(-2)).sum(-1) / math.sqrt(self.cfg.emb_dim) + self.recency
        scores = scores.masked_fill(window == 0, float("-inf"))
        att = torch.softmax(scores, dim=-1)
        return torch.nan_to_num(att, nan=0.0)  # all-empty window -> zeros

    def output_embeddings(self, idx: Tensor | None = None) -> Tensor:
        """Item embeddings as the explore head scores them (unit length with `cosine`): all of
        them (V, E), or those of `idx` (..., E). In inference the normalised table is computed
        once per weight version, not per call (it is the serving hot path)."""
        w = self.item_emb.weight
        if not self.cfg.cosine:
            return w if idx is None else self.item_emb(idx)
        if idx is not None:
            return F.normalize(self.item_emb(idx), dim=-1)
        if torch.is_grad_enabled() and w.requires_grad:
            return F.normalize(w, dim=-1)
        key = (w.data_ptr(), w._version, w.device)
        cache = self.__dict__.get("_unit_items")
        if cache is None or cache[0] != key:
            cache = self.__dict__["_unit_items"] = (key, F.normalize(w.detach(), dim=-1))
        return cache[1]

    def explore_logits(self, out: Outputs) -> Tensor:
        """(..., V) scores over every item index, tied to the input embeddings."""
        q, w = out.item_query, self.output_embeddings()
        if q.dim() == 2:  # one fused multiply-add (the serving path)
            return torch.addmm(self.item_bias, q, w.t())
        return q @ w.t() + self.item_bias

    def next_item_probs(self, out: Outputs, rq: Tensor, window: Tensor) -> Tensor:
        """The full next-item distribution (..., V): the gate's share on the user's window
        (repeat), the rest spread by the explore softmax (all of it when the window is empty).
        Inference only (computed in place, it is the serving hot path); training uses
        `item_target_log_prob`."""
        att = self._repeat_attention(rq, window) * out.repeat_gate.unsqueeze(-1)
        explore = self.mix_transitions(torch.softmax(self.explore_logits(out), dim=-1), window)
        return mixture_probs(explore, att, window)

    def item_log_probs(self, out: Outputs, rq: Tensor, window: Tensor) -> Tensor:
        """log of `next_item_probs` (..., V)."""
        return torch.log(self.next_item_probs(out, rq, window).clamp_min(1e-30))

    def top_items(self, out: Outputs, rq: Tensor, window: Tensor, k: int,
                  n_known: int | None = None, chunk_elements: int | None = None) -> tuple[Tensor, Tensor]:
        """Serving path: the k most probable next items (probabilities, indices), (..., k) each.
        With `n_known`, only indices 1..n_known (real catalogue items, not padding or hash
        buckets) are recommended; the probabilities stay those of `next_item_probs`.

        Rows go through in chunks of at most `chunk_elements` catalogue-wide probabilities
        (default: about 1 MB on a CPU, so a chunk's logits stay in cache from the multiply to the
        top-K; 256 MB on a GPU): memory stays bounded however large the catalogue or batch."""
        lead = window.shape[:-1]
        flat = out.map(lambda t: t.reshape(-1, *t.shape[len(lead):]))
        rq, window = rq.reshape(-1, rq.shape[-1]), window.reshape(-1, window.shape[-1])
        if chunk_elements is None:
            chunk_elements = 1 << (26 if window.device.type == "cuda" else 18)
        rows = max(1, chunk_elements // self.cfg.item_vocab)
        lo, hi = (0, self.cfg.item_vocab) if n_known is None else (1, 1 + n_known)
        kk = min(k, hi - lo)
        vals, idx = [], []
        for s in range(0, max(1, window.shape[0]), rows):  # an empty batch: one empty chunk
            chunk = itemgetter(slice(s, s + rows))
            p = self.next_item_probs(flat.map(chunk), chunk(rq), chunk(window))
            v, i = p[:, lo:hi].topk(kk, dim=-1)
            vals.append(v)
            idx.append(i + lo)
        v, i = (vals[0], idx[0]) if len(vals) == 1 else (torch.cat(vals), torch.cat(idx))
        return v.reshape(*lead, kk), i.reshape(*lead, kk)

    def item_target_log_prob(self, out: Outputs, rq: Tensor, window: Tensor, target: Tensor,
                             negatives: Tensor | None = None,
                             neg_log_q: Tensor | None = None) -> Tensor:
        """log p(target) without materialising the mixture over V (training path). (...)

        With `negatives` (K,) item indices drawn with log-probabilities `neg_log_q` (K,), the
        explore softmax is estimated over {target} + negatives with the logQ correction (sampled
        softmax; negatives that equal the target are masked): training cost O(K) instead of O(V).
        """
        if negatives is None:
            logits = self.explore_logits(out)
            log_explore = torch.log_softmax(logits, dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
        else:
            assert neg_log_q is not None
            pos = (out.item_query * self.output_embeddings(target)).sum(-1) + self.item_bias[target]
            neg = (out.item_query @ self.output_embeddings(negatives).t() + self.item_bias[negatives]
                   - neg_log_q)
            neg = neg.masked_fill(negatives == target.unsqueeze(-1), float("-inf"))
            log_explore = pos - torch.logsumexp(torch.cat([pos.unsqueeze(-1), neg], dim=-1), dim=-1)
        if self.cfg.transition_k:  # as mix_transitions, for the target only
            idx, mass = self._transitions(window)
            to_target = (mass * (idx == target.unsqueeze(-1))).sum(-1)
            log_explore = torch.logaddexp(torch.log1p(-mass.sum(-1).clamp(max=1 - 1e-6)) + log_explore,
                                          torch.log(to_target + 1e-30))
        att = self._repeat_attention(rq, window)
        has_window = (att.sum(-1) > 0).float()
        g = out.repeat_gate * has_window
        p_rep = (att * (window == target.unsqueeze(-1)).float()).sum(-1)
        return torch.logaddexp(torch.log1p(-g.clamp(max=1 - 1e-6)) + log_explore,
                               torch.log(g * p_rep + 1e-30))


def mixture_probs(explore: Tensor, repeat: Tensor, window: Tensor) -> Tensor:
    """The next-item distribution (..., V) from the explore softmax (..., V), scaled in place by
    the mass the window leaves it, and the gated repeat attention over the window (..., W), added
    to the window's items."""
    return explore.mul_(1 - repeat.sum(-1, keepdim=True)).scatter_add_(-1, window, repeat)


def window_stats(window: Tensor, item: Tensor) -> Tensor:
    """(..., GATE_STATS_DIM) what the window (..., W) says about returning to a seen item: log1p
    of its length; the share of distinct items; log1p of the number of repeated slots; whether
    the newest item `item` (...) was already in it; the newest item's share of the window. A
    function of the window the stream stores, so training and serving read the same numbers."""
    valid = window != 0
    n = valid.sum(-1)
    same = (window.unsqueeze(-1) == window.unsqueeze(-2)) & valid.unsqueeze(-1)  # (..., W, W)
    later = torch.ones(same.shape[-2:], dtype=torch.bool, device=window.device).triu(1)
    distinct = (valid & ~(same & later).any(-1)).sum(-1)  # slots whose item does not come again
    newest = ((window == item.unsqueeze(-1)) & valid).sum(-1) * (item != 0)
    n_f = n.clamp_min(1).float()
    return torch.stack([torch.log1p(n.float()), distinct / n_f, torch.log1p((n - distinct).float()),
                        (newest > 1).float(), newest / n_f], dim=-1)


def profile_inputs(n_events: Tensor, age_s: Tensor, action_counts: Tensor) -> Tensor:
    """The user's profile as the churn head reads it (..., PROFILE_DIM): log1p of the number of
    events so far (this one included), of the seconds since the first, and of each action's
    count (..., A). The stream has all three in UserState (n_events, ts - first_seen,
    action_counts)."""
    return torch.log1p(torch.cat([n_events.unsqueeze(-1).float(), age_s.clamp_min(0).unsqueeze(-1).float(),
                                  action_counts.float()], dim=-1))


def sequence_profile(action: Tensor, log_gap: Tensor, n_actions: int = N_ACTIONS) -> Tensor:
    """(B, T) sequences from a fresh start -> (B, T, PROFILE_DIM) `profile_inputs` after each
    event: counts are running counts, the age is the sum of the gaps (the newest event's time
    minus the first's; a late event, gap 0, keeps the age of the newest)."""
    n = torch.arange(1, action.shape[-1] + 1, device=action.device).expand(action.shape)
    age = torch.expm1(log_gap.double()).cumsum(-1)
    return profile_inputs(n, age, F.one_hot(action, n_actions).cumsum(-2))


def sliding_windows(items: Tensor, window: int) -> Tensor:
    """(B, T) item indices -> (B, T, W): at t, the last W items up to and including t."""
    padded = F.pad(items, (window - 1, 0))
    return padded.unfold(1, window, 1)
