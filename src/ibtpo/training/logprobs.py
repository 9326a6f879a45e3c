"""Per-token log-probs and entropies of whole sequences under the training forward.

Shape letters: N sequences (rows), T tokens, V vocabulary size. Position t scores token t
(predicted from the logits at t - 1); position 0 holds 0.

Memory at real vocabulary sizes (150k for Qwen): the model's logits (N, T, V) stay in the model's
dtype; log-softmax runs in fp32 on chunks of at most `chunk_tokens` positions, and when gradients
are needed each chunk runs under activation checkpointing, so autograd keeps no fp32 (N, T, V)
tensor, only the model's own logits (the fp32 chunk is recomputed in the backward pass).
Entropy costs one more pass over the logits: it is computed only when asked for, and with a
gradient only when it is trained (`entropy="grad"`, the entropy bonus); `entropy="metric"`
computes it without a graph. Training forwards never build a KV cache (`use_cache=False`).

Packed trees (`training.packing`): a token is not always predicted by the position just before it
(a step's first token is predicted by its parent's last token, which may sit several siblings
back), so `logit_index` (N, T) may name the position whose logits predict each token. The
log-normaliser and the entropy are then computed once per position and gathered, never per token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

ENTROPY_MODES = (None, "metric", "grad")
CHUNK_TOKENS = 4096  # positions per fp32 chunk: 4096 x 150k vocab x 4 bytes = 2.4 GB at most


def _chunk_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float):
    """log softmax(logits / T)[target] in fp32 for one chunk: (n, V), (n,) -> (n,)."""
    scaled = logits.float() / temperature
    return scaled.gather(-1, targets[:, None])[:, 0] - torch.logsumexp(scaled, dim=-1)


def _chunk_entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Entropy of softmax(logits / T) in fp32 for one chunk: (n, V) -> (n,)."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def _chunked(fn, flat_logits: torch.Tensor, *args, chunk_tokens: int, grad: bool) -> torch.Tensor:
    """Apply `fn` to row chunks of (M, V) logits; checkpointed when a graph is wanted."""
    outs = []
    for i in range(0, flat_logits.shape[0], chunk_tokens):
        part = [flat_logits[i:i + chunk_tokens]] + [
            a[i:i + chunk_tokens] if isinstance(a, torch.Tensor) else a for a in args]
        if grad and torch.is_grad_enabled() and flat_logits.requires_grad:
            outs.append(checkpoint(fn, *part, use_reentrant=False))
        else:
            outs.append(fn(*part))
    return torch.cat(outs) if outs else flat_logits.new_zeros((0,), dtype=torch.float32)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                   chunk_tokens: int = CHUNK_TOKENS) -> torch.Tensor:
    """log softmax(logits / T) at `targets`: (N, T, V), (N, T) -> (N, T) fp32."""
    n, t, v = logits.shape
    flat = _chunked(_chunk_logprobs, logits.reshape(n * t, v), targets.reshape(n * t),
                    temperature, chunk_tokens=chunk_tokens, grad=True)
    return flat.view(n, t)


def _chunk_logsumexp(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log sum exp(logits / T) in fp32 for one chunk: (n, V) -> (n,)."""
    return torch.logsumexp(logits.float() / temperature, dim=-1)


def gathered_logprobs(logits: torch.Tensor, targets: torch.Tensor, logit_index: torch.Tensor,
                      temperature: float = 1.0, chunk_tokens: int = CHUNK_TOKENS) -> torch.Tensor:
    """log softmax(logits[n, logit_index[n, t]] / T)[targets[n, t]]: (N, T, V), (N, T), (N, T)
    -> (N, T) fp32. Each position's normaliser is computed once, however many tokens it predicts."""
    n, t, v = logits.shape
    flat = logits.reshape(n * t, v)
    lse = _chunked(_chunk_logsumexp, flat, temperature, chunk_tokens=chunk_tokens, grad=True)
    src = (logit_index + torch.arange(n, device=logits.device)[:, None] * t).reshape(-1)  # (N*T,)
    picked = flat[src, targets.reshape(-1)].float() / temperature  # (N*T,)
    return (picked - lse[src]).view(n, t)


def token_entropy(logits: torch.Tensor, temperature: float = 1.0, grad: bool = False,
                  chunk_tokens: int = CHUNK_TOKENS) -> torch.Tensor:
    """Entropy of softmax(logits / T) per position: (N, T, V) -> (N, T) fp32."""
    n, t, v = logits.shape
    if not grad:
        with torch.no_grad():
            return _chunked(_chunk_entropy, logits.detach().reshape(n * t, v), temperature,
                            chunk_tokens=chunk_tokens, grad=False).view(n, t)
    return _chunked(_chunk_entropy, logits.reshape(n * t, v), temperature,
                    chunk_tokens=chunk_tokens, grad=True).view(n, t)


def default_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, T) position ids counting real tokens from 0 (padding clamped to 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      temperature: float = 1.0, *, position_ids: torch.Tensor | None = None,
                      entropy: str | None = "metric", chunk_tokens: int = CHUNK_TOKENS,
                      logit_index: torch.Tensor | None = None):
    """Log-prob of every token under softmax(logits / T), and optionally its entropy.

    `attention_mask` is the usual (N, T) padding mask, or any mask the model accepts (e.g. a 4-D
    boolean mask for packed trees, with explicit `position_ids`). `entropy` is one of
    ENTROPY_MODES: None (not computed), "metric" (no gradient) or "grad" (with gradient).
    `logit_index` (N, T): the position whose logits predict each token (packed trees); default
    t - 1. Returns `(logprobs, entropy)`, both (N, T) fp32 (entropy: of the distribution each token
    was drawn from), with 0 at position 0 when `logit_index` is None; entropy is None when not
    asked for.
    """
    if entropy not in ENTROPY_MODES:
        raise ValueError(f"entropy: expected one of {ENTROPY_MODES}, got {entropy!r}")
    if position_ids is None:
        position_ids = default_position_ids(attention_mask)  # (N, T)
    if logit_index is not None:
        return _indexed_logprobs(model, input_ids, attention_mask, position_ids, logit_index,
                                 temperature, entropy, chunk_tokens)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False).logits[:, :-1]  # (N, T-1, V), model dtype
    logp = F.pad(token_logprobs(logits, input_ids[:, 1:], temperature, chunk_tokens), (1, 0))
    if entropy is None:
        return logp, None
    ent = token_entropy(logits, temperature, grad=entropy == "grad", chunk_tokens=chunk_tokens)
    return logp, F.pad(ent, (1, 0))


def _indexed_logprobs(model, input_ids, attention_mask, position_ids, logit_index, temperature,
                      entropy, chunk_tokens):
    """`sequence_logprobs` with an explicit `logit_index` (packed trees)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False).logits  # (N, T, V), model dtype
    logp = gathered_logprobs(logits, input_ids, logit_index, temperature, chunk_tokens)
    if entropy is None:
        return logp, None
    ent = token_entropy(logits, temperature, grad=entropy == "grad", chunk_tokens=chunk_tokens)
    return logp, ent.gather(1, logit_index)  # (N, T)
