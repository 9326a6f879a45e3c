"""Branch-prefix KV reuse: the keys and values of finished continuations, by token ids (issue 16).

A branch from node u continues `prompt + steps up to u`, a prefix of the continuation that
produced u; that continuation's rows computed the keys and values of every position of it. The
row pool (`ibtpo.rollout.pool`, `rollout.scheduler=continuous`) keeps them here when a row stops,
and a new row whose prefix (all but its last token) is covered by an entry starts from that entry's
cache instead of re-encoding the prompt and every ancestor step: no join prefill at all. Its last
prefix token is fed at the next decode step with the rows already running.

Config key: [`rollout.prefix_cache_mb`] (0 = off, the default). Entries live for one rollout (the
policy changes after it); past the byte cap the least recently used entries are evicted.

Shape letters: L layers, H key/value heads, T cached positions, D head size.

Numbers: a position's keys and values depend only on its token and the tokens before it, so a
reused row computes what a prefilled one computes up to the last bits that a decode step's shapes
give the sums (not bit for bit: hence opt-in; `tests/test_prefix_cache.py` bounds the difference on
the test model). Those bits can still tell apart candidates whose IB-Scores tie in exact arithmetic
(sibling steps with identical tokens), so a run's trees may part from the default's there
(docs/PERFORMANCE.md, "Ties break on last bits").
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass
class Entry:
    """The cached positions of one finished continuation (its token ids are the cache's key):
    per layer (H, T, D) keys and values."""

    keys: list[torch.Tensor]  # L x (H, T, D)
    values: list[torch.Tensor]  # L x (H, T, D)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


class PrefixCache:
    """Entries by token ids, at most `max_bytes` in all, least recently used evicted first."""

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"max_bytes: expected an integer >= 0, got {max_bytes!r}")
        self.max_bytes, self.nbytes = max_bytes, 0
        self.entries: OrderedDict[tuple[int, ...], Entry] = OrderedDict()
        self.stats = dict.fromkeys(("hits", "misses", "reused_tokens", "evicted"), 0)

    def __len__(self) -> int:
        return len(self.entries)

    def admits(self, nbytes: int) -> bool:
        """Whether an entry of `nbytes` can be kept (check before copying one)."""
        return 0 < nbytes <= self.max_bytes

    def put(self, tokens: list[int], keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Keep the cache of `tokens` (one (H, T, D) key and value tensor per layer, T =
        len(tokens)); an entry larger than the cap is not kept."""
        for t in (*keys, *values):
            if t.dim() != 3 or t.shape[1] != len(tokens):
                raise ValueError(f"prefix cache: expected (H, {len(tokens)}, D) keys and values "
                                 f"per layer, got {tuple(t.shape)}")
        entry = Entry(keys, values)
        if not tokens or not self.admits(entry.nbytes):
            return
        key = tuple(tokens)
        if key in self.entries:
            self.nbytes -= self.entries.pop(key).nbytes
        self.entries[key] = entry
        self.nbytes += entry.nbytes
        while self.nbytes > self.max_bytes:
            _, old = self.entries.popitem(last=False)
            self.nbytes -= old.nbytes
            self.stats["evicted"] += 1

    def lookup(self, prefix: list[int]) -> Entry | None:
        """The most recently used entry whose tokens start with `prefix` (non-empty), or None."""
        n, want = len(prefix), tuple(prefix)
        hit = None
        if n:
            for key in reversed(self.entries):
                if len(key) >= n and key[n - 1] == want[-1] and key[:n] == want:
                    hit = key
                    break
        if hit is None:
            self.stats["misses"] += 1
            return None
        self.entries.move_to_end(hit)
        self.stats["hits"] += 1
        self.stats["reused_tokens"] += n
        return self.entries[hit]
