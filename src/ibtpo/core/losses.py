"""Policy loss: clipped surrogate, k3 KL, entropy bonus, aggregation (ALGORITHM.md §5). Pure.

Shape letters: N sequences (one per trajectory), T tokens (prompt + response, right-padded).
Every input is (N, T); `response_mask` is 1 on the tokens trained on.

    rho_t = exp(logprobs - old_logprobs)
    L_t   = -min(rho_t A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) A_t) + beta_kl KL_t - c H_t
    KL_t  = exp(ref - logprobs) - (ref - logprobs) - 1          (k3)

Choices (config key in brackets):
- [`eps_low`, `eps_high`] default 0.2 / 0.2 (0.28 high = clip-higher); [`beta_kl`] default here 0.0
  (the trainer passes the config's 0.001); `ref_logprobs` is required when beta_kl > 0.
- [`entropy_coef`] c >= 0: the entropy of the policy per token (`entropy`, (N, T)), aggregated like
  the loss and subtracted (a bonus); required when entropy_coef > 0.
- [`agg_mode`]: "seq-mean-token-mean" (default; mean over each sequence's masked tokens, then over
  the sequences that have at least one), "token-mean" (DAPO; mean over all masked tokens),
  "seq-mean-token-sum-norm" (Dr. GRPO; masked sum of each sequence / [`max_response_len`], T when
  None, then mean over all N sequences).
- Metrics are detached tensors: loss/pg, loss/kl, loss/entropy (each aggregated with `agg_mode`, so
  loss/total = pg + beta_kl kl - entropy_coef entropy), loss/clipfrac (= low + high),
  loss/clipfrac_low (rho < 1 - eps_low with A < 0: the clipped term is used), loss/clipfrac_high
  (rho > 1 + eps_high with A > 0), loss/ratio_mean (all three token-means over masked tokens),
  loss/ratio_std (the ratio's standard deviation over the same tokens: 0 on-policy),
  loss/total. No .item() here.
- `weighted_policy_loss` is the same loss over tokens that several sequences share (tree packing,
  `training.packing`): per-token sums of the sequences' aggregation weights, split by the sign of
  their advantages, give the same value and gradient as `policy_loss` over the unpacked rows.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

AGG_MODES = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """KL_t = exp(ref - logp) - (ref - logp) - 1  (>= 0)."""
    d = ref_logprobs - logprobs                 # (N, T)
    return torch.exp(d) - d - 1.0


def masked_token_mean(x: Tensor, mask: Tensor) -> Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def aggregate(x: Tensor, mask: Tensor, agg_mode: str,
              max_response_len: int | None = None) -> Tensor:
    """Reduce per-token values (N, T) to a scalar with one of AGG_MODES."""
    if agg_mode == "token-mean":
        return masked_token_mean(x, mask)
    row_sum = (x * mask).sum(dim=1)             # (N,)
    if agg_mode == "seq-mean-token-mean":
        n_tok = mask.sum(dim=1)                 # (N,)
        has = (n_tok > 0).to(x.dtype)
        return (row_sum / n_tok.clamp(min=1.0) * has).sum() / has.sum().clamp(min=1.0)
    if agg_mode == "seq-mean-token-sum-norm":
        norm = float(max_response_len if max_response_len is not None else x.shape[1])
        return (row_sum / norm).mean()
    raise ValueError(f"agg_mode: expected one of {AGG_MODES}, got {agg_mode!r}")


def _check_inputs(tensors: dict[str, Tensor | None], eps_low, eps_high, agg_mode, max_response_len):
    shape = tensors["logprobs"].shape
    if len(shape) != 2:
        raise ValueError(f"logprobs: expected a 2-D (N, T) tensor, got shape {tuple(shape)}")
    for name, t in tensors.items():
        if t is not None and t.shape != shape:
            raise ValueError(f"{name}: expected shape {tuple(shape)} (as logprobs), "
                             f"got {tuple(t.shape)}")
    for name, v in (("eps_low", eps_low), ("eps_high", eps_high)):
        if not v >= 0:
            raise ValueError(f"{name}: expected a number >= 0, got {v!r}")
    if agg_mode not in AGG_MODES:
        raise ValueError(f"agg_mode: expected one of {AGG_MODES}, got {agg_mode!r}")
    if max_response_len is not None and not max_response_len > 0:
        raise ValueError("max_response_len: expected a positive integer or None, "
                         f"got {max_response_len!r}")


def _check_terms(ref_logprobs, beta_kl, entropy, entropy_coef) -> None:
    if not beta_kl >= 0:
        raise ValueError(f"beta_kl: expected a number >= 0, got {beta_kl!r}")
    if beta_kl > 0 and ref_logprobs is None:
        raise ValueError("ref_logprobs: expected an (N, T) tensor when beta_kl > 0, got None")
    if not entropy_coef >= 0:
        raise ValueError(f"entropy_coef: expected a number >= 0, got {entropy_coef!r}")
    if entropy_coef > 0 and entropy is None:
        raise ValueError("entropy: expected an (N, T) tensor when entropy_coef > 0, got None")


def clipped_surrogate(ratio: Tensor, advantages: Tensor, eps_low: float, eps_high: float):
    """Per-token -min(rho A, clip(rho) A) and the low/high clip indicators, all (N, T)."""
    pg = torch.maximum(-advantages * ratio,
                       -advantages * torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high))
    low = (ratio < 1.0 - eps_low) & (advantages < 0)
    high = (ratio > 1.0 + eps_high) & (advantages > 0)
    return pg, low, high


def policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, response_mask: Tensor,
                *, eps_low: float = 0.2, eps_high: float = 0.2, ref_logprobs: Tensor | None = None,
                beta_kl: float = 0.0, entropy: Tensor | None = None, entropy_coef: float = 0.0,
                agg_mode: str = "seq-mean-token-mean",
                max_response_len: int | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO's token-level clipped surrogate + beta_kl * k3 KL - entropy_coef * entropy."""
    _check_inputs({"logprobs": logprobs, "old_logprobs": old_logprobs, "advantages": advantages,
                   "response_mask": response_mask, "ref_logprobs": ref_logprobs,
                   "entropy": entropy},
                  eps_low, eps_high, agg_mode, max_response_len)
    _check_terms(ref_logprobs, beta_kl, entropy, entropy_coef)
    logp = logprobs.float()                                         # (N, T)
    mask = response_mask.to(logp.dtype)                            # (N, T)
    ratio = torch.exp(logp - old_logprobs.float())                  # (N, T)
    pg_tok, low, high = clipped_surrogate(ratio, advantages.float(), eps_low, eps_high)
    agg = partial(aggregate, mask=mask, agg_mode=agg_mode, max_response_len=max_response_len)
    pg = agg(pg_tok)
    kl = agg(k3_kl(logp, ref_logprobs.float())) if ref_logprobs is not None else pg.new_zeros(())
    ent = agg(entropy.float()) if entropy is not None else pg.new_zeros(())
    loss = pg + beta_kl * kl - entropy_coef * ent
    metrics = {"loss/pg": pg.detach(), "loss/kl": kl.detach(), "loss/entropy": ent.detach(),
               **_token_metrics(ratio, low, high, mask), "loss/total": loss.detach()}
    return loss, metrics


def _token_metrics(ratio: Tensor, low: Tensor, high: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Clip fractions and mean ratio over the masked tokens (detached)."""
    def tm(x: Tensor) -> Tensor:
        return masked_token_mean(x.to(mask.dtype), mask).detach()
    mean = tm(ratio)
    return {"loss/clipfrac": tm(low | high), "loss/clipfrac_low": tm(low),
            "loss/clipfrac_high": tm(high), "loss/ratio_mean": mean,
            "loss/ratio_std": tm((ratio.detach() - mean) ** 2).sqrt()}


def weighted_policy_loss(logprobs: Tensor, old_logprobs: Tensor, weights: dict[str, Tensor],
                         denominator: Tensor, *, eps_low: float = 0.2, eps_high: float = 0.2,
                         ref_logprobs: Tensor | None = None, beta_kl: float = 0.0,
                         entropy: Tensor | None = None,
                         entropy_coef: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """`policy_loss` with the aggregation folded into per-token weights (tree packing).

    `weights` holds (N, T) tensors: `weight` (sum of the aggregation weights w_i of the sequences
    through the token), `pos_weight` / `neg_weight` (sum of w_i max(A_i, 0) / w_i max(-A_i, 0)),
    and `count`, `count_pos`, `count_neg` (sequences through the token; with A > 0; with A < 0).
    With g+(rho) = -min(rho, clip(rho)) and g-(rho) = max(rho, clip(rho)), a sequence's clipped
    term is A g+ for A >= 0 and |A| g- for A < 0, so
        pg = sum(pos_weight g+ + neg_weight g-) / denominator
        kl, entropy: sum(weight x) / denominator
    equal the aggregated unpacked terms exactly. Metrics as `policy_loss`'s, with tokens counted
    once per sequence through them.
    """
    _check_terms(ref_logprobs, beta_kl, entropy, entropy_coef)
    logp = logprobs.float()                                         # (N, T)
    ratio = torch.exp(logp - old_logprobs.float())                  # (N, T)
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)     # (N, T)
    pg_tok = (weights["pos_weight"] * -torch.minimum(ratio, clipped)
              + weights["neg_weight"] * torch.maximum(ratio, clipped))
    denominator = denominator.clamp(min=1.0)  # as the unpacked means: an empty batch gives 0

    def total(x: Tensor) -> Tensor:
        return (weights["weight"] * x).sum() / denominator

    pg = pg_tok.sum() / denominator
    kl = total(k3_kl(logp, ref_logprobs.float())) if ref_logprobs is not None else pg.new_zeros(())
    ent = total(entropy.float()) if entropy is not None else pg.new_zeros(())
    loss = pg + beta_kl * kl - entropy_coef * ent
    return loss, {"loss/pg": pg.detach(), "loss/kl": kl.detach(), "loss/entropy": ent.detach(),
                  **_weighted_token_metrics(ratio, weights, eps_low, eps_high),
                  "loss/total": loss.detach()}


def _weighted_token_metrics(ratio: Tensor, weights: dict[str, Tensor], eps_low: float,
                            eps_high: float) -> dict[str, Tensor]:
    """`_token_metrics` with every token counted once per sequence through it (detached)."""
    ratio = ratio.detach()
    n = weights["count"].sum().clamp(min=1.0)
    low = (weights["count_neg"] * (ratio < 1.0 - eps_low)).sum() / n
    high = (weights["count_pos"] * (ratio > 1.0 + eps_high)).sum() / n
    mean = (weights["count"] * ratio).sum() / n
    return {"loss/clipfrac": low + high, "loss/clipfrac_low": low, "loss/clipfrac_high": high,
            "loss/ratio_mean": mean,
            "loss/ratio_std": ((weights["count"] * (ratio - mean) ** 2).sum() / n).sqrt()}
