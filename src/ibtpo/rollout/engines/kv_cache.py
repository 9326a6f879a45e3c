"""The torch backend's KV cache: prefill a chunk of prefixes, then extend it one token per row.

Shape letters: N live sequences in a chunk, T tokens, V vocabulary size, H heads, D head size.

- prefixes are left-padded; position ids count real tokens only (position 0 at each sequence's
  first real token), so a padded row computes exactly what it would alone;
- one prefill forward fills a `DynamicCache`; each decode step feeds one token per live row;
  full-attention layers use `PreallocLayer`, which writes in place instead of concatenating
  (`torch.cat` of the whole cache at every token dominated the decode time on CPU);
- identical prefixes (a prompt sampled G times) are run once and their cache rows copied.
Used by `ibtpo.rollout.engines.torch.TorchEngine` and the row pool (`ibtpo.rollout.pool`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class PreallocLayer(DynamicLayer):
    """A `DynamicLayer` whose keys/values live in a buffer (N, H, capacity, D) written in place."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def lazy_initialization(self, key_states, value_states) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        n, h, cap = key_states.shape[0], key_states.shape[1], self.capacity
        self.k_buf = key_states.new_empty((n, h, cap, key_states.shape[-1]))  # (N, H, T, D)
        self.v_buf = value_states.new_empty((n, h, cap, value_states.shape[-1]))  # (N, H, T, D)
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        """Append the new states (N, H, t, D); return views of every cached position."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            self.grow(max(end, 2 * self.capacity))
        self.k_buf[:, :, self.length:end] = key_states
        self.v_buf[:, :, self.length:end] = value_states
        self.length = end
        self.keys, self.values = self.k_buf[:, :, :end], self.v_buf[:, :, :end]
        return self.keys, self.values

    def grow(self, capacity: int) -> None:
        """Reallocate the buffers with room for `capacity` positions."""
        pad = (0, 0, 0, capacity - self.capacity)
        self.k_buf, self.v_buf = F.pad(self.k_buf, pad), F.pad(self.v_buf, pad)
        self.capacity = capacity

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self.k_buf, self.v_buf = self.k_buf[indices], self.v_buf[indices]
            self.keys, self.values = self.k_buf[:, :, :self.length], self.v_buf[:, :, :self.length]


def make_cache(model, capacity: int) -> DynamicCache:
    """A `DynamicCache` for `model` whose plain full-attention layers preallocate `capacity`.

    Sliding-window or other special layers (Gemma, Mistral, hybrid models) keep transformers' own.
    """
    cache = DynamicCache(config=model.config)
    cache.layers = [PreallocLayer(capacity) if type(layer) is DynamicLayer else layer
                    for layer in cache.layers]
    return cache


@dataclass
class DecodeState:
    """The live rows of a chunk being decoded, and their KV cache."""

    cache: DynamicCache
    attention_mask: torch.Tensor  # (N, T) 1 = real token, covers every cached position
    next_pos: torch.Tensor  # (N,) position id of the next token of each row
    rows: torch.Tensor  # (N,) index of each live row in the chunk

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the rows `keep` (indices into the live rows), in the cache too."""
        self.cache.batch_select_indices(keep)
        self.attention_mask = self.attention_mask[keep]
        self.next_pos = self.next_pos[keep]
        self.rows = self.rows[keep]


def left_pad(prefixes: list[list[int]], pad_token_id: int,
             device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad `prefixes` into `(input_ids, attention_mask)`, both (N, T)."""
    width = max(len(p) for p in prefixes)
    ids = torch.full((len(prefixes), width), pad_token_id, dtype=torch.long)  # (N, T)
    mask = torch.zeros((len(prefixes), width), dtype=torch.long)  # (N, T)
    for i, p in enumerate(prefixes):
        if p:
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, T) position ids: 0 at each row's first real token, padding clamped to 0."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def prefill(model, prefixes: list[list[int]], pad_token_id: int,
            max_new_tokens: int = 0) -> tuple[torch.Tensor, DecodeState]:
    """Run the prefixes through the model; return next-token logits (N, V) and the decode state.

    `max_new_tokens` sizes the cache (it still grows past it if more tokens are fed).
    Identical prefixes (a prompt sampled G times) are run once and their cache rows copied.
    """
    device = next(model.parameters()).device
    unique, inverse = unique_prefixes(prefixes)
    ids, mask = left_pad(unique, pad_token_id, device)  # (U, T)
    cache = make_cache(model, ids.shape[1] + max(max_new_tokens, 1))
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                past_key_values=cache, use_cache=True, logits_to_keep=1)
    logits = out.logits[:, -1]  # (U, V)
    if len(unique) < len(prefixes):
        index = torch.tensor(inverse, device=device)  # (N,)
        cache.batch_select_indices(index)
        mask, logits = mask[index], logits[index]  # (N, T), (N, V)
    state = DecodeState(cache=cache, attention_mask=mask, next_pos=mask.sum(-1),
                        rows=torch.arange(len(prefixes), device=device))
    return logits, state  # (N, V)


def unique_prefixes(prefixes: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """(distinct prefixes in first-seen order, index of each prefix among them)."""
    first: dict[tuple, int] = {}
    inverse = [first.setdefault(tuple(p), len(first)) for p in prefixes]
    return [list(p) for p in first], inverse


def decode_attention(device: torch.device):
    """SDPA backend of one-token decode steps: on CPU the math kernel (the flash kernel's blocking
    costs more than it saves at one query: measured 15-20% of the decode loop on the tiny model,
    same tokens, log-probs within 1e-6); elsewhere torch's own choice."""
    if device.type == "cpu":
        return sdpa_kernel([SDPBackend.MATH])
    return contextlib.nullcontext()


def extend(model, state: DecodeState, tokens: torch.Tensor) -> torch.Tensor:
    """Feed one token (N,) per live row; return the next-token logits (N, V)."""
    ones = torch.ones_like(state.attention_mask[:, :1])
    state.attention_mask = torch.cat([state.attention_mask, ones], dim=1)  # (N, T + 1)
    with decode_attention(tokens.device):
        out = model(input_ids=tokens[:, None], attention_mask=state.attention_mask,
                    position_ids=state.next_pos[:, None], past_key_values=state.cache,
                    use_cache=True)
    state.next_pos = state.next_pos + 1
    return out.logits[:, -1]  # (N, V)
