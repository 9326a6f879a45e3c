"""The built-in generation backend: batched sampling with a KV cache from any token prefix.

This is the sampling half of ALGORITHM.md §3 behind the engine contract
(`ibtpo.rollout.engines.contract`): one `Sample` per prefix. Requests of many trees are
generated together, chunked by `batch_size`; it runs on CPU and CUDA (device and dtype are the
model's), and is the default (`rollout.engine=torch`).

Shape letters: N live sequences in a chunk, T tokens, V vocabulary size.

How a chunk is decoded:
- prefill and one-token decode steps over a preallocated KV cache (`kv_cache`);
- a row stops at the first of the engine's stop ids (EOS, end of turn: every one the tokenizer
  and the generation config declare) or at its own `max_new_tokens`; stopped rows are dropped
  from the batch and the cache once they are `drop_fraction` (default 1/4) of the live rows (a
  drop copies the cache);
- each token is drawn by inverse CDF at the uniform of (the request's stream key, its position),
  and log-probs and entropies follow the contract's convention (`sampling`).
"""

from __future__ import annotations

import torch

from ibtpo.rollout.engines import kv_cache
from ibtpo.rollout.engines.contract import (
    Sample,
    SamplingParams,
    check_keys,
    check_requests,
    check_stop_ids,
)
from ibtpo.rollout.engines.sampling import next_tokens


class TorchEngine:
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
        logits, state = kv_cache.prefill(self.model, prefixes, self.pad_token_id, width)
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
            logits = kv_cache.extend(self.model, state, tok)
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
