"""The generation engine: batched sampling with a KV cache from any token prefix.

This is the sampling half of ALGORITHM.md §3: the rollout hands the engine one flat list of
prefixes (prompts, or a prompt plus the steps of a tree node) and gets back one `Sample` per
prefix. Requests of many trees are generated together, chunked by `batch_size`.

Shape letters: N live sequences in a chunk, T tokens, V vocabulary size.

Log-prob convention (contracts): log-probs and entropies are those of softmax(logits / T) over the
full vocabulary, before top-k / top-p truncation; greedy decoding (T = 0) reports them at T = 1.
Log-probs are computed in fp32 whatever the model dtype.

How a chunk is decoded:
- prefixes are left-padded; position ids count real tokens only (position 0 at each sequence's
  first real token), so a padded row computes exactly what it would alone;
- one prefill forward fills a `DynamicCache`; each decode step feeds one token per live row;
  full-attention layers use `PreallocLayer`, which writes in place instead of concatenating
  (`torch.cat` of the whole cache at every token dominated the decode time on CPU);
- a row stops at the first of the engine's stop ids (EOS, end of turn: every one the tokenizer
  and the generation config declare) or at its own `max_new_tokens`; stopped rows are dropped
  from the batch and the cache once they are `drop_fraction` (default 1/4) of the live rows (a
  drop copies the cache);
- sampling is by inverse CDF: each request carries a stream key (`keys`, one per prefix;
  `ibtpo.rollout.streams`), and its token at position t is the first whose cumulative
  probability exceeds the uniform of (key, t); so a request's sample depends on its key and its
  prefix alone, never on the batch, the chunking, the row order or the device's RNG.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from ibtpo.rollout.streams import uniforms


@dataclass
class SamplingParams:
    """How the next token is drawn. `temperature = 0` is greedy decoding."""

    temperature: float = 1.0  # 0 = greedy; log-probs then reported at T = 1
    top_p: float = 1.0  # nucleus mass kept, in (0, 1]; 1 = off
    top_k: int = 0  # tokens kept; 0 = off

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if not self.temperature >= 0:
            raise ValueError(
                f"temperature: expected a number >= 0 (0 = greedy), got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: expected a number in (0, 1], got {self.top_p!r}")
        if self.top_k < 0:
            raise ValueError(f"top_k: expected an integer >= 0 (0 = off), got {self.top_k!r}")


@dataclass
class Sample:
    """One generated continuation (new tokens only)."""

    token_ids: list[int]  # includes the stop token when stop_reason == "eos"
    logprobs: list[float]  # one per token in token_ids
    entropies: list[float]  # one per token in token_ids
    stop_reason: str  # "eos" (a stop id: EOS or end of turn) | "length"


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


def token_stats(logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 log-softmax (N, V) of logits / T (T = 1 when greedy) and the entropy (N,) of it."""
    scaled = logits.float() / (temperature if temperature > 0 else 1.0)
    logp = F.log_softmax(scaled, dim=-1)  # (N, V)
    entropy = torch.special.entr(logp.exp()).sum(-1)  # (N,)
    return logp, entropy


def truncate(logp: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set to -inf the log-probs (N, V) outside the top-k and the top-p nucleus.

    As in HF and vLLM, top-p is taken over the top-k survivors renormalised to sum to 1.
    """
    if top_k > 0 and top_k < logp.shape[-1]:
        kth = torch.topk(logp, top_k, dim=-1).values[:, -1:]  # (N, 1)
        logp = logp.masked_fill(logp < kth, float("-inf"))
        logp = logp - torch.logsumexp(logp, dim=-1, keepdim=True)
    if top_p < 1.0:
        sorted_logp, order = torch.sort(logp, dim=-1, descending=True)  # (N, V)
        probs = sorted_logp.exp()
        mass_before = probs.cumsum(-1) - probs  # mass of the strictly more likely tokens
        sorted_logp = sorted_logp.masked_fill(mass_before >= top_p, float("-inf"))
        logp = torch.full_like(logp, float("-inf")).scatter(-1, order, sorted_logp)
    return logp


def draw(logp: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Sample one token per row (N,) from log-probs (N, V) by inverse CDF at the uniforms u (N,):
    the first token whose cumulative probability exceeds u times the total (a token of
    probability 0 is never drawn)."""
    cdf = logp.exp().double().cumsum(-1)  # (N, V)
    target = (u.to(cdf.device) * cdf[:, -1])[:, None]  # (N, 1)
    return torch.searchsorted(cdf, target, right=True)[:, 0].clamp(max=logp.shape[-1] - 1)


def next_tokens(logits, sampling: SamplingParams, keys: torch.Tensor | None,
                position: int) -> tuple[torch.Tensor, ...]:
    """Pick the next token of each row (its `position`-th new token; `keys` (N,) are the rows'
    stream keys, unused when greedy); return (tokens, logprobs, entropies), each (N,)."""
    logp, entropy = token_stats(logits, sampling.temperature)
    if sampling.temperature == 0:
        tokens = logp.argmax(-1)
    else:
        tokens = draw(truncate(logp, sampling.top_k, sampling.top_p), uniforms(keys, position))
    return tokens, logp.gather(-1, tokens[:, None])[:, 0], entropy


def check_keys(keys, n: int, sampling: SamplingParams, sampled: bool) -> list[int] | None:
    """The stream keys of `n` requests: one int per prefix, required when a token is `sampled`
    at T > 0."""
    if keys is None and (sampling.temperature == 0 or not sampled):
        return None
    if keys is None or len(keys) != n:
        got = "none" if keys is None else f"{len(keys)}"
        raise ValueError(f"keys: sampling at temperature > 0 needs one stream key per prefix "
                         f"({n}; see ibtpo.rollout.streams), got {got}")
    return [int(k) for k in keys]


def check_requests(prefixes, max_new_tokens) -> list[int]:
    """Validate the request list; return one generation limit per prefix."""
    if isinstance(max_new_tokens, int):
        max_new_tokens = [max_new_tokens] * len(prefixes)
    if len(max_new_tokens) != len(prefixes):
        raise ValueError(f"max_new_tokens: expected one entry per prefix ({len(prefixes)}), "
                         f"got {len(max_new_tokens)}")
    for i, (p, m) in enumerate(zip(prefixes, max_new_tokens)):
        if len(p) == 0:
            raise ValueError(f"prefixes[{i}]: expected at least one token, got an empty prefix")
        if m < 0:
            raise ValueError(f"max_new_tokens[{i}]: expected an integer >= 0, got {m!r}")
    return [int(m) for m in max_new_tokens]


def check_stop_ids(stop_ids) -> list[int]:
    """One stop id or a non-empty collection of them, as a sorted list of distinct ints."""
    ids = [stop_ids] if isinstance(stop_ids, int) else list(stop_ids or ())
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError(f"stop_ids: expected a token id or a non-empty list of them, "
                         f"got {stop_ids!r}")
    return sorted(set(ids))


class Engine:
    """Batched sampler over a Hugging Face causal LM (device and dtype come from the model)."""

    def __init__(self, model, stop_ids: int | list[int], pad_token_id: int, batch_size: int = 256,
                 drop_fraction: float = 0.25):
        """`stop_ids`: the token id, or ids, that end a response (EOS, end of turn: see
        `ibtpo.models.stop_token_ids`); `batch_size`: requests decoded together;
        `drop_fraction`: share of stopped rows at which they are dropped from the batch and the
        cache (0 = drop at once)."""
        if batch_size < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
        if not 0 <= drop_fraction <= 1:
            raise ValueError(f"drop_fraction: expected a number in [0, 1], got {drop_fraction!r}")
        self.drop_fraction = drop_fraction
        self.model = model
        self.stop_ids = check_stop_ids(stop_ids)
        self.pad_token_id = pad_token_id
        self.batch_size = batch_size

    def generate(self, prefixes: list[list[int]], max_new_tokens: int | list[int],
                 sampling: SamplingParams, keys: list[int] | None = None) -> list[Sample]:
        """One `Sample` per prefix, in order. `keys`: one stream key per prefix (required when
        sampling; `ibtpo.seeding.stream_key`). Prefixes are grouped by length into chunks."""
        limits = check_requests(prefixes, max_new_tokens)
        sampling.validate()
        keys = check_keys(keys, len(prefixes), sampling, any(limits))
        samples = [Sample([], [], [], "length") for _ in prefixes]
        todo = sorted((i for i in range(len(prefixes)) if limits[i] > 0),
                      key=lambda i: len(prefixes[i]))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            outs = self.generate_chunk([prefixes[i] for i in chunk], [limits[i] for i in chunk],
                                       sampling, None if keys is None else [keys[i] for i in chunk])
            for i, s in zip(chunk, outs):
                samples[i] = s
        return samples

    def generate_chunk(self, prefixes, limits, sampling, keys) -> list[Sample]:
        """Decode one chunk (every limit >= 1) to completion."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                return self.decode(prefixes, limits, sampling, keys)
        finally:
            self.model.train(was_training)

    def decode(self, prefixes, limits, sampling, keys) -> list[Sample]:
        """The decode loop: sample, record, drop stopped rows, extend the cache.

        Stopped rows are dropped once they are `drop_fraction` of the live rows (each drop copies
        the cache); until then they decode on, and `to_samples` cuts what they add.
        """
        width = max(limits)
        logits, state = prefill(self.model, prefixes, self.pad_token_id, width)
        device, n = logits.device, len(prefixes)
        limit = torch.tensor(limits, device=device)  # (N,)
        row_keys = None if keys is None else torch.tensor(keys, device=device)  # (N,) int64
        stop_ids = torch.tensor(self.stop_ids, device=device)  # (S,)
        tokens = torch.zeros((n, width), dtype=torch.long, device=device)  # (N, T)
        logprobs = torch.zeros((n, width), device=device)  # (N, T)
        entropies = torch.zeros((n, width), device=device)  # (N, T)
        stopped = torch.zeros(n, dtype=torch.bool, device=device)  # (N,) over live rows
        for step in range(width):
            rows = state.rows
            tok, lp, ent = next_tokens(logits, sampling,
                                       None if row_keys is None else row_keys[rows], step)
            tokens[rows, step], logprobs[rows, step], entropies[rows, step] = tok, lp, ent
            stopped |= torch.isin(tok, stop_ids) | (limit[rows] <= step + 1)
            n_stopped = int(stopped.sum())
            if n_stopped == len(rows):
                break
            if n_stopped >= self.drop_fraction * len(rows):
                keep = (~stopped).nonzero()[:, 0]
                state.select(keep)
                tok, stopped = tok[keep], stopped[keep]
            logits = extend(self.model, state, tok)
        return self.to_samples(tokens, logprobs, entropies, limits)

    def to_samples(self, tokens, logprobs, entropies, limits) -> list[Sample]:
        """Cut each row (N, T) at its first stop token or its limit; one host transfer for the
        chunk (later slots of a stopped row are unused)."""
        tokens, logprobs, entropies = tokens.tolist(), logprobs.tolist(), entropies.tolist()
        stops, samples = set(self.stop_ids), []
        for row, lps, ents, lim in zip(tokens, logprobs, entropies, limits):
            row = row[:lim]
            end = next((i + 1 for i, t in enumerate(row) if t in stops), None)
            hit = end is not None
            end = end if hit else lim
            samples.append(Sample(row[:end], lps[:end], ents[:end], "eos" if hit else "length"))
        return samples
