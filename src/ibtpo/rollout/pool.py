"""The row pool: continuous batching of the rollout's continuations (ALGORITHM.md §3, issue 16).

`TorchEngine.generate` decodes a fixed list of requests to completion. `RowPool.run` keeps a pool of
live rows instead: a row leaves the step it stops, `on_finish` hears of it at once, and the rows
it returns (a tree's next branches) join the running batch at the next decode step while the
other rows go on decoding. `ibtpo.rollout.scheduler` grows trees on it without a round barrier.

Shape letters: N live rows, T cached positions, W new-token slots, V vocabulary size.

How rows join and leave (the cache is the engine's: `DecodeState` over `PreallocLayer`s):
- joining rows are prefilled together (`kv_cache.prefill`: left-padded, identical prefixes run
  once); their cache is then concatenated to the live one along the batch, the shorter of the two
  left-padded to the longer (a new prefix longer than the cache left-extends the cache). Padded
  positions are masked, so attention gives them weight exactly 0, and position ids are explicit
  per row: a row computes what it computes alone, up to the last bits that a different number of
  keys gives the attention's sums;
- a stopped row stays in the batch (its tokens ignored) until stopped rows are
  `engine.drop_fraction` of the rows or rows join (the join's copy drops them for free); a drop
  also trims the columns that every row left-pads (`trim_left`), so the cache does not grow
  without bound while rows come and go;
- at most `engine.batch_size` rows are live; further rows wait in a queue, first in first out;
- a row's token t is drawn at the uniform of (its key, t) (`ibtpo.rollout.streams`), as in
  `TorchEngine.generate`, so a row samples the same tokens in whatever batch it runs;
- with a prefix cache (`rollout.prefix_cache_mb` > 0, `ibtpo.rollout.prefix_cache`), a row that
  stops leaves its cache there, and a queued row whose prefix but its last token is covered by an
  entry joins from that entry instead of a prefill: it is *pending* for one decode step, which
  feeds its last prefix token with the running rows (nothing is sampled for it at that step).
Only caches of plain full-attention layers (`PreallocLayer`) can be joined; a model with sliding-
window or other special layers raises and needs `rollout.scheduler=sync`.
Stats of a run: decode_steps (batched one-token forwards), row_steps (rows summed over them),
prefills (join forwards), joins (rows that joined while other rows were decoding), max_rows,
prefix_hits (rows that joined from the prefix cache), prefix_tokens (the positions they reused)
and prefix_evicted (entries the byte cap evicted).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ibtpo.rollout.engines import kv_cache
from ibtpo.rollout.engines.contract import Sample, SamplingParams
from ibtpo.rollout.engines.kv_cache import DecodeState, PreallocLayer
from ibtpo.rollout.engines.sampling import next_tokens
from ibtpo.rollout.prefix_cache import Entry, PrefixCache


@dataclass
class Row:
    """One continuation to decode: at most `limit` new tokens after `prefix`."""

    prefix: list[int]
    limit: int  # >= 0; 0 finishes at once with an empty sample
    key: int | None  # sampling stream (`ibtpo.rollout.streams`); None only when greedy
    tag: object = None  # the caller's, handed back with the sample


@dataclass
class Live:
    """The rows being decoded, their cache and what they generated so far."""

    state: DecodeState  # cache, attention_mask (N, T), next_pos (N,)
    logits: torch.Tensor  # (N, V) next-token logits
    last: torch.Tensor  # (N,) the token sampled last (fed at the next decode step)
    keys: torch.Tensor  # (N,) int64 stream keys
    done: torch.Tensor  # (N,) new tokens recorded
    limit: torch.Tensor  # (N,) generation limits
    stopped: torch.Tensor  # (N,) bool
    pending: torch.Tensor  # (N,) bool: joined from the prefix cache, last prefix token not fed
    tokens: torch.Tensor  # (N, W)
    logprobs: torch.Tensor  # (N, W)
    entropies: torch.Tensor  # (N, W)
    tags: list
    prefixes: list  # each row's prefix (token ids)

    PER_ROW = ("logits", "last", "keys", "done", "limit", "stopped", "pending", "tokens",
               "logprobs", "entropies")

    def __len__(self) -> int:
        return len(self.tags)

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the rows `keep` (N',), in the cache too."""
        self.state.select(keep)
        for name in self.PER_ROW:
            setattr(self, name, getattr(self, name)[keep])
        keep = keep.tolist()
        self.tags = [self.tags[i] for i in keep]
        self.prefixes = [self.prefixes[i] for i in keep]

    def room(self) -> int:
        """Cache positions the live rows may still need."""
        return int((self.limit - self.done).max())


# ----------------------------------------------------------------------------- cache surgery


def check_joinable(layer) -> None:
    """ValueError unless `layer` is a plain full-attention cache layer (`PreallocLayer`)."""
    if type(layer) is not PreallocLayer:
        raise ValueError(f"rollout.scheduler: 'continuous' joins rows into full-attention KV "
                         f"caches only, got a {type(layer).__name__} layer; use "
                         f"rollout.scheduler=sync for this model")


def layer_kv(layer) -> tuple[torch.Tensor, torch.Tensor]:
    """The cached keys and values of a layer, (N, H, T, D) each."""
    check_joinable(layer)
    return layer.k_buf[:, :, :layer.length], layer.v_buf[:, :, :layer.length]


def set_kv(layer: PreallocLayer, k: torch.Tensor, v: torch.Tensor, room: int) -> None:
    """Make (N, H, T, D) keys and values the layer's cache, with `room` free positions after."""
    set_buffers(layer, F.pad(k, (0, 0, 0, room)), F.pad(v, (0, 0, 0, room)), k.shape[2])


def set_buffers(layer: PreallocLayer, k_buf: torch.Tensor, v_buf: torch.Tensor, t: int) -> None:
    """Make (N, H, C, D) buffers the layer's cache, their first `t` positions filled."""
    layer.k_buf, layer.v_buf = k_buf, v_buf
    layer.capacity, layer.length = k_buf.shape[2], t
    layer.keys, layer.values = k_buf[:, :, :t], v_buf[:, :, :t]


def join_states(a: DecodeState, b: DecodeState, room: int) -> DecodeState:
    """`a` with the rows of `b` after its own, the shorter cache left-padded to the longer."""
    ta, tb = a.attention_mask.shape[1], b.attention_mask.shape[1]
    t = max(ta, tb)
    for la, lb in zip(a.cache.layers, b.cache.layers):
        (ka, va), (kb, vb) = layer_kv(la), layer_kv(lb)
        assert ka.shape[2] == ta and kb.shape[2] == tb  # the mask covers every cached position
        k = torch.cat([F.pad(ka, (0, 0, t - ta, 0)), F.pad(kb, (0, 0, t - tb, 0))])  # (N, H, T, D)
        v = torch.cat([F.pad(va, (0, 0, t - ta, 0)), F.pad(vb, (0, 0, t - tb, 0))])  # (N, H, T, D)
        set_kv(la, k, v, room)
    a.attention_mask = torch.cat([F.pad(a.attention_mask, (t - ta, 0)),
                                  F.pad(b.attention_mask, (t - tb, 0))])  # (N, T)
    a.next_pos = torch.cat([a.next_pos, b.next_pos])  # (N,)
    a.rows = torch.arange(len(a.next_pos), device=a.next_pos.device)
    return a


def trim_left(state: DecodeState) -> int:
    """Drop the leading cache columns that no row attends to; return how many."""
    cut = int(state.attention_mask.any(0).int().argmax())  # first column some row attends
    if cut == 0:
        return 0
    for layer in state.cache.layers:
        layer_kv(layer)
        layer.k_buf, layer.v_buf = layer.k_buf[:, :, cut:], layer.v_buf[:, :, cut:]
        layer.capacity, layer.length = layer.capacity - cut, layer.length - cut
        end = layer.length
        layer.keys, layer.values = layer.k_buf[:, :, :end], layer.v_buf[:, :, :end]
    state.attention_mask = state.attention_mask[:, cut:]  # (N, T - cut)
    return cut


def pad_slots(x: torch.Tensor, width: int) -> torch.Tensor:
    """Right-pad (N, W) per-token records to `width` slots."""
    return F.pad(x, (0, width - x.shape[1]))


def concat(a: Live, b: Live) -> Live:
    """The rows of `a` then those of `b`, one cache."""
    room = max(a.room(), b.room())
    join_states(a.state, b.state, room)
    width = max(a.tokens.shape[1], b.tokens.shape[1])
    for name in Live.PER_ROW:
        x, y = getattr(a, name), getattr(b, name)
        if name in ("tokens", "logprobs", "entropies"):
            x, y = pad_slots(x, width), pad_slots(y, width)
        setattr(a, name, torch.cat([x, y]))
    a.tags = a.tags + b.tags
    a.prefixes = a.prefixes + b.prefixes
    return a


def entries_cache(model, hits: list[Entry], lens: list[int], room: int):
    """A cache of `model` holding the first lens[j] positions of entry hits[j] in row j,
    left-padded to the longest, with `room` free positions after them; and that length T."""
    cache, t = kv_cache.make_cache(model, 1), max(lens)
    if len(cache.layers) != len(hits[0].keys):
        raise ValueError(f"prefix cache: {len(hits[0].keys)} cached layers for a model of "
                         f"{len(cache.layers)}")
    for li, layer in enumerate(cache.layers):
        check_joinable(layer)
        bufs = []
        for part in ("keys", "values"):
            first = getattr(hits[0], part)[li]  # (H, T_e, D)
            buf = first.new_zeros((len(hits), first.shape[0], t + room, first.shape[2]))
            for j, (e, m) in enumerate(zip(hits, lens)):
                buf[j, :, t - m:t] = getattr(e, part)[li][:, :m]
            bufs.append(buf)  # (n, H, T + room, D)
        layer.dtype, layer.device, layer.is_initialized = first.dtype, first.device, True
        set_buffers(layer, *bufs, t)
    return cache, t


def row_kv(state: DecodeState, i: int, n: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Copies of row i's last `n` cached positions (its real ones: a row's positions are
    contiguous and end at the last column), (H, n, D) keys and values per layer."""
    ks, vs = [], []
    for layer in state.cache.layers:
        k, v = layer_kv(layer)
        t = k.shape[2]
        ks.append(k[i, :, t - n:].clone())
        vs.append(v[i, :, t - n:].clone())
    return ks, vs


def bytes_per_position(state: DecodeState) -> int:
    """Bytes of one row's keys and values at one position, over every layer."""
    return sum(2 * k.shape[1] * k.shape[3] * k.element_size()
               for k, _ in map(layer_kv, state.cache.layers))


# ----------------------------------------------------------------------------- the pool


class RowPool:
    """Continuous batching over the built-in `TorchEngine` (its model, stop ids, padding, batch
    size and drop fraction)."""

    def __init__(self, engine, prefix_cache_bytes: int = 0):
        for name in ("model", "stop_ids", "pad_token_id", "batch_size", "drop_fraction"):
            if not hasattr(engine, name):
                raise ValueError(f"rollout.scheduler: 'continuous' needs the built-in engine "
                                 f"(ibtpo.rollout.engines.torch.TorchEngine), got "
                                 f"{type(engine).__name__} "
                                 f"without `{name}`; use rollout.scheduler=sync")
        self.engine = engine
        self.prefix_cache_bytes = prefix_cache_bytes
        self.prefix_cache: PrefixCache | None = None  # one per run: the policy changes after it
        self.stats = dict.fromkeys(("decode_steps", "row_steps", "prefills", "joins",
                                    "max_rows", "prefix_hits", "prefix_tokens",
                                    "prefix_evicted"), 0)

    def run(self, rows: list[Row], sampling: SamplingParams,
            on_finish: Callable[[list[tuple[object, Sample]]], list[Row]]) -> dict:
        """Decode `rows` and every row `on_finish` returns, until none is left; return stats.

        `on_finish(finished)` gets (tag, Sample) of the rows that just stopped and returns the
        rows to start next (they join at the next decode step)."""
        sampling.validate()
        model = self.engine.model
        was_training = model.training
        model.eval()
        if self.prefix_cache_bytes > 0:
            self.prefix_cache = PrefixCache(self.prefix_cache_bytes)
        try:
            with torch.inference_mode():
                self.loop(rows, sampling, on_finish)
        finally:
            model.train(was_training)
            if self.prefix_cache is not None:
                for name, key in (("prefix_hits", "hits"), ("prefix_tokens", "reused_tokens"),
                                  ("prefix_evicted", "evicted")):
                    self.stats[name] += self.prefix_cache.stats[key]
            self.prefix_cache = None
        return dict(self.stats)

    def loop(self, rows, sampling, on_finish) -> None:
        """Admit, sample, hand back the rows that stopped, retire them, decode one step."""
        queue, live = deque(), None
        self.enqueue(queue, rows, sampling, on_finish)
        while True:
            live = self.admit(queue, live)
            if live is None:
                return
            ends = self.sample_step(live, sampling)
            if ends:
                self.keep_prefixes(live, ends)
                samples = self.harvest(live, ends)
                finished = [(live.tags[i], s) for i, s in zip(ends, samples)]
                self.enqueue(queue, on_finish(finished), sampling, on_finish)
            live = self.retire(live, joining=bool(queue))
            if live is not None:
                self.stats["decode_steps"] += 1
                self.stats["row_steps"] += len(live)
                live.logits = kv_cache.extend(self.engine.model, live.state, live.last)
                live.pending.zero_()

    def enqueue(self, queue: deque, rows: list[Row], sampling, on_finish) -> None:
        """Queue `rows`; rows with nothing to generate finish at once."""
        for r in rows:
            if r.key is None and sampling.temperature > 0:
                raise ValueError("keys: sampling at temperature > 0 needs one stream key per "
                                 "row (see ibtpo.rollout.streams), got None")
        queue.extend(r for r in rows if r.limit > 0)
        empty = [(r.tag, Sample([], [], [], "length")) for r in rows if r.limit <= 0]
        if empty:
            self.enqueue(queue, on_finish(empty), sampling, on_finish)

    def admit(self, queue: deque, live: Live | None) -> Live | None:
        """Join queued rows while the batch has room (`engine.batch_size`)."""
        free = self.engine.batch_size - (0 if live is None else len(live))
        if not queue or free <= 0:
            return live
        rows = [queue.popleft() for _ in range(min(free, len(queue)))]
        hits = [None if self.prefix_cache is None else self.prefix_cache.lookup(r.prefix[:-1])
                for r in rows]
        if live is not None:  # rows that join while others are decoding
            self.stats["joins"] += len(rows)
        for group in (self.start([r for r, h in zip(rows, hits) if h is None]),
                      self.start_cached([(r, h) for r, h in zip(rows, hits) if h is not None])):
            if group is not None:
                live = group if live is None else concat(live, group)
        self.stats["max_rows"] = max(self.stats["max_rows"], len(live))
        return live

    def start(self, rows: list[Row]) -> Live | None:
        """Prefill `rows` into a `Live` of their own (None when there are none)."""
        if not rows:
            return None
        width = max(r.limit for r in rows)
        logits, state = kv_cache.prefill(self.engine.model, [r.prefix for r in rows],
                                    self.engine.pad_token_id, width)  # (n, V)
        self.stats["prefills"] += 1
        return self.new_live(rows, state, logits, pending=False)

    def start_cached(self, hits: list[tuple[Row, Entry]]) -> Live | None:
        """Pending rows from their prefix-cache entries (the cached keys and values of all but
        each row's last prefix token), None when there are none."""
        if not hits:
            return None
        rows = [r for r, _ in hits]
        lens = [len(r.prefix) - 1 for r in rows]
        cache, t = entries_cache(self.engine.model, [e for _, e in hits], lens,
                                 room=max(r.limit for r in rows))
        head = self.engine.model.get_output_embeddings().weight  # (V, hidden)
        device = head.device
        mask = torch.tensor([[0] * (t - m) + [1] * m for m in lens], device=device)  # (n, T)
        state = DecodeState(cache=cache, attention_mask=mask, next_pos=mask.sum(-1),
                            rows=torch.arange(len(rows), device=device))
        logits = head.new_zeros((len(rows), head.shape[0]))  # (n, V) unused: pending
        live = self.new_live(rows, state, logits, pending=True)
        live.last = torch.tensor([r.prefix[-1] for r in rows], device=device)  # fed next
        return live

    def new_live(self, rows: list[Row], state: DecodeState, logits: torch.Tensor,
                 pending: bool) -> Live:
        """A `Live` of `rows` over `state`, nothing generated yet."""
        width = max(r.limit for r in rows)
        device, n = logits.device, len(rows)
        zeros = torch.zeros((n, width), device=device)  # (n, W)
        return Live(state=state, logits=logits,
                    last=torch.zeros(n, dtype=torch.long, device=device),
                    keys=torch.tensor([r.key or 0 for r in rows], device=device),  # (n,) int64
                    done=torch.zeros(n, dtype=torch.long, device=device),
                    limit=torch.tensor([r.limit for r in rows], device=device),
                    stopped=torch.zeros(n, dtype=torch.bool, device=device),
                    pending=torch.full((n,), pending, dtype=torch.bool, device=device),
                    tokens=zeros.long(), logprobs=zeros, entropies=zeros.clone(),
                    tags=[r.tag for r in rows], prefixes=[r.prefix for r in rows])

    def keep_prefixes(self, live: Live, ends: list[int]) -> None:
        """Put the cache of the rows `ends` (just stopped: every position but the token that
        stopped them is cached) in the prefix cache, when there is one."""
        if self.prefix_cache is None:
            return
        idx = torch.tensor(ends, device=live.done.device)
        per_position = bytes_per_position(live.state)
        for i, done, tokens in zip(ends, live.done[idx].tolist(), live.tokens[idx].tolist()):
            fed = live.prefixes[i] + tokens[:done - 1]
            if self.prefix_cache.admits(len(fed) * per_position):
                self.prefix_cache.put(fed, *row_kv(live.state, i, len(fed)))

    def sample_step(self, live: Live, sampling: SamplingParams) -> list[int]:
        """Draw every row's next token, record it for the rows still going; return the rows that
        stop at it."""
        tok, lp, ent = next_tokens(live.logits, sampling, live.keys, live.done)  # (N,) each
        active = ~live.stopped & ~live.pending  # pending rows have no logits yet
        going = active.nonzero()[:, 0]
        at = live.done[going]
        live.tokens[going, at], live.logprobs[going, at] = tok[going], lp[going]
        live.entropies[going, at] = ent[going]
        live.done[going] = at + 1
        live.last = torch.where(live.pending, live.last, tok)
        stop_ids = torch.tensor(self.engine.stop_ids, device=tok.device)  # (S,)
        ends = active & (torch.isin(tok, stop_ids) | (live.done >= live.limit))
        live.stopped |= ends
        return ends.nonzero()[:, 0].tolist()

    def harvest(self, live: Live, ends: list[int]) -> list[Sample]:
        """The samples of the rows `ends` (one host transfer)."""
        idx = torch.tensor(ends, device=live.done.device)
        return self.engine.to_samples(live.tokens[idx], live.logprobs[idx], live.entropies[idx],
                                      live.done[idx].tolist())

    def retire(self, live: Live, joining: bool) -> Live | None:
        """Drop the stopped rows (and trim the cache) when rows join or enough have stopped;
        None when no row is left."""
        n_stopped = int(live.stopped.sum())
        if n_stopped == len(live):
            return None
        if n_stopped and (joining or n_stopped >= self.engine.drop_fraction * len(live)):
            live.select((~live.stopped).nonzero()[:, 0])
            trim_left(live.state)
        return live
