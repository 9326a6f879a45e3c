"""Data parallel through accelerate: ranks, shares of a step's prompts, global sums, metrics.

One process (plain `ibtpo train`): every helper here is the identity and nothing talks to a process
group. Under `accelerate launch --num_processes W` (see configs/accelerate/ and the README):
- the model is wrapped by `Accelerator.prepare` (DDP, or FSDP from the accelerate config); the
  gradients of each optimizer step are all-reduced once, at the last micro-batch (`sync`), and
  DDP/FSDP average them over the W ranks, which `loss_scale` undoes;
- rank 0 draws the step's P prompts and broadcasts them; rank r grows the trees of its contiguous
  share (`share`: the first P mod W ranks get one prompt more), so P must be >= W;
- the denominators of the loss aggregation are global (`global_sum`), so the update equals the
  one-process update on the same trees (up to float summation order);
- metrics are reduced over ranks by `reduce_metrics` (table `REDUCTIONS`); only rank 0 writes logs
  and checkpoints.
Device: the rank's own device (`cuda:LOCAL_RANK`, or cpu with gloo when `model.device` resolves
to cpu: a CPU-only machine runs configs/accelerate/cpu.yaml, a MULTI_GPU launch, because
accelerate spawns several CPU processes itself only through mpirun).
Mixed precision from the accelerate config patches the model's forward, which the rollout engine
shares, so sampling and training run the same autocast. Under FSDP2, `mixed_precision: bf16` is
FSDP's mixed-precision policy: accelerate upcasts the trainable parameters to fp32 before
sharding (fp32 sharded master weights and AdamW state), gathers and computes in bf16; with a
16-bit `model.dtype` ibtpo loads the policy in fp32 itself (`training/precision.py`), keeps the
rollout copy in `model.dtype` and autocasts sampling to it (configs/accelerate/fsdp2_bf16.yaml).
FSDP: the training model is sharded; rollouts and evaluation run on a full, unsharded copy that
is refreshed after every optimizer step (`separate_rollout_model`). Written for accelerate's FSDP,
which needs GPUs; it has not run here (no GPU).
Collectives wait up to COLLECTIVE_TIMEOUT_S (ranks wait for the slowest rollout and for rank 0's
evaluation).
"""

from __future__ import annotations

import contextlib
import datetime
import os

import torch

from ibtpo.models import resolve_device

# Ranks wait for each other at every step (rollouts differ in length) and while rank 0 evaluates:
# far longer than torch's default NCCL timeout (10 minutes) on a large model and eval set.
COLLECTIVE_TIMEOUT_S = 4 * 3600

# How each metric combines over ranks: "sum", "max", "traj" (mean weighted by the rank's
# trajectories), "loss" (weighted by the rank's share of the loss denominator), or "prompts"
# (weighted by the rank's prompts: the default, exact for per-prompt means).
REDUCTIONS = {
    **dict.fromkeys(["rollout/generated_tokens", "rollout/num_trajectories", "rollout/unscorable",
                     "rollout/branches", "rollout/prompts", "rollout/reward_errors",
                     "train/batch_tokens", "train/trajectory_tokens", "rollout/joins"], "sum"),
    **dict.fromkeys(["tree/depth_max", "rollout/rounds", "train/grad_norm", "train/skipped",
                     "rollout/decode_steps"], "max"),
    **dict.fromkeys(["rollout/reward_mean", "rollout/response_len_mean", "tree/depth_mean",
                     "rollout/clipped_ratio"], "traj"),
}


def launched() -> bool:
    """True inside a process started by `accelerate launch` / torchrun with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def reduction_of(name: str) -> str:
    """The REDUCTIONS rule of metric `name` (time/* take the slowest rank, loss/* the share)."""
    if name in REDUCTIONS:
        return REDUCTIONS[name]
    if name.startswith("time/"):
        return "max"
    return "loss" if name.startswith("loss/") else "prompts"


class Dist:
    """The accelerate side of the trainer: one `Accelerator`, plus the few collectives it needs."""

    def __init__(self, device: str):
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        cpu = launched() and resolve_device(device).type == "cpu"
        patience = InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
        self.accel = Accelerator(cpu=cpu, device_placement=False, kwargs_handlers=[patience])
        self.world, self.rank = self.accel.num_processes, self.accel.process_index
        self.is_main = self.accel.is_main_process
        self.fsdp = self.accel.distributed_type.value == "FSDP"
        if self.accel.mixed_precision == "fp16":
            raise ValueError("accelerate mixed_precision: fp16 is not supported (its loss scaling "
                             "skips steps that ibtpo would count as non-finite); use bf16, or "
                             "model.dtype=bfloat16 with mixed_precision 'no'")
        # accelerate wraps the model and optimizer (DDP, FSDP, autocast) only when it has to
        self.managed = self.world > 1 or self.fsdp or self.accel.mixed_precision != "no"
        if self.world == 1:
            self.device = resolve_device(device)
        else:
            dev = self.accel.device
            self.device = torch.device("cpu") if dev.type == "cpu" else dev

    # --- model and gradients ---------------------------------------------------------------------
    def prepare(self, model, optimizer):
        """(model, optimizer) wrapped for this launch (the same objects in one process)."""
        return self.accel.prepare(model, optimizer) if self.managed else (model, optimizer)

    def unwrap(self, model):
        return self.accel.unwrap_model(model) if self.managed else model

    def sync(self, model, last: bool):
        """Context of one micro-batch's forward and backward: gradients are all-reduced only at
        the last micro-batch of an optimizer step (every rank has exactly one such backward)."""
        return contextlib.nullcontext() if last or self.world == 1 else self.accel.no_sync(model)

    def loss_scale(self) -> int:
        """DDP and FSDP average gradients over ranks; the loss weights are shares of the global
        denominator, so each rank's loss is multiplied by W to make that average a sum."""
        return self.world

    def backward(self, loss: torch.Tensor) -> None:
        if self.managed:
            self.accel.backward(loss)
        else:
            loss.backward()

    def clip_grad_norm(self, model, max_norm: float) -> torch.Tensor:
        """Global gradient norm before clipping (FSDP-aware through accelerate)."""
        if self.managed:
            return self.accel.clip_grad_norm_(model.parameters(), max_norm)
        params = [p for p in model.parameters() if p.grad is not None]
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    # --- state dicts (full, for checkpoints) and the FSDP rollout copy --------------------------
    def full_state_dict(self, model) -> dict:
        """The model's full state dict (on rank 0 under FSDP; the others get {})."""
        if not self.fsdp:
            return self.unwrap(model).state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                    cpu_offload=True))

    def optimizer_state_dict(self, model, optimizer) -> dict:
        """The optimizer's full state dict (identical on every rank unless FSDP)."""
        if not self.fsdp:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        return get_optimizer_state_dict(model, optimizer.optimizer, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))

    def load_optimizer_state_dict(self, model, optimizer, state: dict) -> None:
        if not self.fsdp:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(model, optimizer.optimizer, state,
                                 options=StateDictOptions(full_state_dict=True))

    def separate_rollout_model(self, policy, dtype: torch.dtype | None = None) -> None:
        """Under FSDP the training model is sharded: give the policy (rollouts, evaluation) a full
        copy of its own (before `prepare`), stored in `dtype` when given (the 16-bit copy of fp32
        master weights: `training/precision.py`). Nothing to do otherwise."""
        if self.fsdp:
            from ibtpo.training.precision import frozen_copy

            policy.model = policy.engine.model = frozen_copy(policy.model, dtype)

    def refresh_rollout_model(self, model, policy) -> None:
        """After an optimizer step under FSDP: copy the new full weights into the rollout model."""
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
            )

            full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
            policy.model.load_state_dict(full)

    # --- collectives ------------------------------------------------------------------------------
    def share(self, items: list) -> list:
        """This rank's contiguous share of `items` (rank 0's list, broadcast first)."""
        if self.world == 1:
            return items
        self.check_prompts_per_step(len(items))
        items = self.broadcast(items)
        with self.accel.split_between_processes(items) as mine:
            return list(mine)

    def check_prompts_per_step(self, n: int, mini_batches: int = 1) -> None:
        """ValueError unless every process gets at least one prompt per mini-batch."""
        if n < self.world * mini_batches:
            raise ValueError(f"train.prompts_per_step: got {n}, expected at least one prompt per "
                             f"process and mini-batch ({self.world} process(es) x "
                             f"train.mini_batches={mini_batches})")

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj])[0]

    def gather(self, obj) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every rank."""
        if self.world == 1:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])

    def global_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of a tensor over ranks (the tensor itself in one process)."""
        if self.world == 1:
            return x
        return self.accel.reduce(x.to(self.device).float(), reduction="sum").to(x.device)

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any rank."""
        if self.world == 1:
            return bool(flag)
        return bool(self.global_sum(torch.tensor(float(flag))) > 0)

    def barrier(self) -> None:
        if self.world > 1:
            self.accel.wait_for_everyone()

    def reduce_metrics(self, metrics: dict, weights: dict) -> dict:
        """One step's metrics over all ranks (see REDUCTIONS); `weights` holds this rank's
        "prompts", "traj" (trajectories) and "loss" (share of the loss denominator)."""
        if self.world == 1:
            return metrics
        rows = self.gather(({k: float(v) for k, v in metrics.items()
                             if isinstance(v, (int, float, torch.Tensor))}, weights))
        return {**metrics, **combine(rows)}


def combine(rows: list[tuple[dict, dict]]) -> dict:
    """Reduce [(metrics, weights)] of every rank with the REDUCTIONS rules."""
    out = {}
    for name in rows[0][0]:
        values = [m[name] for m, _ in rows if name in m]
        rule = reduction_of(name)
        if rule == "sum":
            out[name] = sum(values)
        elif rule == "max":
            out[name] = max(values)
        else:
            w = [ws[rule] for m, ws in rows if name in m]
            out[name] = sum(v * x for v, x in zip(values, w)) / max(sum(w), 1e-12)
    tokens, traj = out.get("rollout/generated_tokens"), out.get("rollout/num_trajectories")
    if tokens is not None and traj is not None and "rollout/trajectories_per_1k_tokens" in out:
        out["rollout/trajectories_per_1k_tokens"] = 1000.0 * traj / tokens if tokens else 0.0
    return out
