"""The torch backend's sampling maths: how the next token is drawn from a row's logits.

Shape letters: N rows, V vocabulary size.

Log-prob convention (the engine contract, `ibtpo.rollout.engines.contract`): log-probs and
entropies are those of softmax(logits / T) over the full vocabulary, before top-k / top-p
truncation; greedy decoding (T = 0) reports them at T = 1. Log-probs are computed in fp32
whatever the model dtype.

Sampling is by inverse CDF: each request carries a stream key (`ibtpo.rollout.streams`), and its
token at position t is the first whose cumulative probability exceeds the uniform of (key, t);
so a request's sample depends on its key and its prefix alone, never on the batch, the chunking,
the row order or the device's RNG.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ibtpo.rollout.engines.contract import SamplingParams
from ibtpo.rollout.streams import uniforms


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
        probs = sorted_logp.double().exp()  # float64: an fp32 cumsum over 150k tokens errs by
        mass_before = probs.cumsum(-1) - probs  # more than the gap to top_p: wrong set size
        sorted_logp = sorted_logp.masked_fill(mass_before >= top_p, float("-inf"))
        logp = torch.full_like(logp, float("-inf")).scatter(-1, order, sorted_logp)
    return logp


def draw(logp: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Sample one token per row (N,) from log-probs (N, V) by inverse CDF at the uniforms u (N,):
    the first token whose cumulative probability exceeds u times the total. A token of
    probability 0 is never drawn: when u times the total rounds to the total (u = 1.0 happens,
    once in 2^53 draws), the last token of positive probability is taken, not the last id."""
    cdf = logp.exp().double().cumsum(-1)  # (N, V)
    total = cdf[:, -1:]  # (N, 1)
    target = u.to(cdf.device)[:, None] * total  # (N, 1)
    last = (cdf < total).sum(-1)  # (N,) the first index whose cdf is the total
    return torch.minimum(torch.searchsorted(cdf, target, right=True)[:, 0], last)


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
