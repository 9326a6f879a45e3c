"""Training precision: fp32 master weights with 16-bit compute, or pure 16-bit parameters.

A bf16 number keeps 8 significant bits: a weight of 0.02 moves in steps of about 1.2e-4, and
AdamW's update at the paper's lr 1e-6 (ALGORITHM.md §6) is about 1e-6, so a bf16 parameter rounds
the update away and the run trains nothing. Hence, when ``model.dtype`` is a 16-bit type and the
parameters train (full fine-tuning, ``lora.r = 0``), the default (``train.master_weights = true``)
is mixed precision:
- the policy is loaded in fp32: its parameters are the master weights, and AdamW's moments and
  the gradients are fp32 too (4 + 4 + 4 + 4 = 16 bytes per parameter);
- every forward runs under ``torch.autocast(model.dtype)``: the training forward, the reference
  forward and the rollout engine's sampling and evaluation (the sampler's log-probs are the
  trees' old log-probs, so sampling and training share the 16-bit compute path, as they did with
  pure 16-bit parameters);
- the frozen copies are stored in ``model.dtype`` (2 bytes per parameter): the reference model
  and, under FSDP, the full rollout copy (``training/distributed.py``).
Under FSDP2 the accelerate config's ``mixed_precision: bf16`` gives FSDP's own mixed-precision
policy (fp32 sharded parameters, bf16 all-gather and compute); ibtpo's autocast runs on top.

``train.master_weights = false`` keeps the parameters (and AdamW state) in ``model.dtype``, as
before this option existed: half the memory, but small updates vanish; it warns. LoRA
(``lora.r > 0``) is unaffected: the adapters are fp32 (peft) and the 16-bit base is frozen.
fp16 compute has no loss scaler here (gradients below fp16's range underflow): prefer bf16.
With ``model.dtype = float32`` nothing changes: ``train.autocast`` alone decides (off, or bf16 on
the training forwards only).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass

import torch

from ibtpo.config import Config
from ibtpo.models import resolve_dtype

SIXTEEN_BIT = ("bfloat16", "float16")
PURE_16BIT_WARNING = (
    "train.master_weights=false with model.dtype={dtype}: parameters and AdamW state stay "
    "{dtype}, whose 8 (bf16) or 11 (fp16) significant bits round away updates smaller than "
    "about |w|/256 (bf16): at train.lr={lr:g} most weights never move. Keep the default "
    "(train.master_weights=true: fp32 master weights, {dtype} compute) unless memory forces this.")


class Pure16BitWarning(UserWarning):
    """Full fine-tuning with 16-bit parameters (``train.master_weights = false``)."""


@dataclass(frozen=True)
class Precision:
    """How a training run stores and computes (module docstring).

    param_dtype: the dtype the policy is loaded in (its parameters, gradients and AdamW state).
    compute_dtype: autocast dtype of the training and reference forwards (None = off).
    rollout_dtype: autocast dtype of sampling and evaluation (None = off).
    frozen_dtype: dtype of the frozen copies (reference, FSDP rollout copy); None = as the policy.
    """

    param_dtype: str
    compute_dtype: torch.dtype | None = None
    rollout_dtype: torch.dtype | None = None
    frozen_dtype: torch.dtype | None = None

    @property
    def master_weights(self) -> bool:
        return self.frozen_dtype is not None


def resolve_precision(cfg: Config, warn: bool = True) -> Precision:
    """The `Precision` of a training run from ``model.dtype``, ``train.master_weights``,
    ``train.autocast`` and ``lora.r``; warns (`Pure16BitWarning`) for pure 16-bit full
    fine-tuning."""
    dtype, full_ft = cfg.model.dtype, cfg.lora.r == 0
    if dtype in SIXTEEN_BIT and full_ft and cfg.train.master_weights:
        compute = resolve_dtype(dtype)
        return Precision("float32", compute, compute, compute)
    if dtype in SIXTEEN_BIT and full_ft and warn:
        warnings.warn(PURE_16BIT_WARNING.format(dtype=dtype, lr=cfg.train.lr), Pure16BitWarning,
                      stacklevel=2)
    return Precision(dtype, torch.bfloat16 if cfg.train.autocast == "bf16" else None)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` to `dtype` on `device`'s type; a no-op context when `dtype` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def frozen_copy(model, dtype: torch.dtype | None = None):
    """A copy of `model` (eval mode, no gradients) whose floating-point parameters and buffers
    are stored in `dtype` (as they are when None): the values of `copy.deepcopy(model).to(dtype)`,
    but each tensor is converted on its own, so no full-precision duplicate of the whole model is
    ever held (16 + 32 GB instead of 32 + 32 GB for an 8B fp32 master model: `benchmarks/
    frozen_copy.py`). Shared tensors (tied embeddings) stay shared."""
    memo = {}
    if dtype is not None:
        for t in [*model.parameters(), *model.buffers()]:
            if id(t) not in memo and t.is_floating_point():
                data = t.detach().to(dtype, copy=True)
                memo[id(t)] = (torch.nn.Parameter(data, requires_grad=False)
                               if isinstance(t, torch.nn.Parameter) else data)
    out = copy.deepcopy(model, memo).eval()
    out.requires_grad_(False)
    return out


def bytes_per_parameter(precision: Precision, reference: bool) -> dict[str, int]:
    """Bytes per parameter of full fine-tuning with AdamW (no activations, no KV cache):
    weights, gradients, the two AdamW moments, the reference copy (when loaded)."""
    size = torch.tensor([], dtype=resolve_dtype(precision.param_dtype)).element_size()
    frozen = precision.frozen_dtype or resolve_dtype(precision.param_dtype)
    ref = torch.tensor([], dtype=frozen).element_size() if reference else 0
    return {"weights": size, "grads": size, "adam": 2 * size, "reference": ref,
            "total": 4 * size + ref}
