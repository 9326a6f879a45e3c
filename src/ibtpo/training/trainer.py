"""The RL loop (ALGORITHM.md §3–5): sample trees -> batch -> reference -> advantages -> loss.

Shapes: ``P`` prompts per step (``train.prompts_per_step``), ``G`` trajectories per prompt,
``N`` rows in a batch, ``T`` tokens per row. With ``train.pack_trees`` (default) a row holds whole
trees laid out once (``training.packing``); otherwise one right-padded row per trajectory
(``training.batch``). Both give the same loss and gradient.
The reference log-probs are computed once per step, before the advantages, and kept in the batch
(the KL term of every PPO pass reads them).

The trainer owns the policy, the frozen reference (only loaded when ``loss.beta_kl > 0`` or A_IB
uses the reference policy's step probabilities, ``advantage.ib_prob = "ref"``; with LoRA,
``lora.r > 0``, the same model with its adapters disabled), the optimizer (over the parameters
that train: the adapters only with LoRA), the step counter and the RNG streams; everything else is
a named call into the core. With ``train.recompute_old_logprobs`` the old log-probs of the batch
are recomputed with the training forward before the update (the trees keep the sampler's, which
the advantages and IB-Scores use).
Checkpoints (``{train.out_dir}/checkpoints/step-N``, ``latest`` names the newest; see
``training/checkpoint.py``) hold the HF model and tokenizer (the adapters with LoRA), the
optimizer, the scheduler, every RNG state, the step, the generated-token count and the config; a
killed run resumes bit for bit.
Under ``accelerate launch`` each rank grows the trees of its share of the step's prompts and the
gradients, loss denominators, token counts and metrics are global (``training/distributed.py``).
Faults (non-finite steps, raising reward functions, SIGINT/SIGTERM): ``training/faults.py``.
One run per ``out_dir``: rank 0 locks it before its first write (``training/runlock.py``).
Precision (fp32 master weights and 16-bit autocast for a 16-bit ``model.dtype``, or pure 16-bit
parameters with ``train.master_weights = false``): ``training/precision.py``.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path

import torch

from ibtpo import kernels
from ibtpo.config import Config
from ibtpo.core.advantages import AdvParams, get_estimator
from ibtpo.data import load_task
from ibtpo.metrics import MetricsLogger, open_wandb, tree_metrics
from ibtpo.models import fingerprint
from ibtpo.progress import progress_bar
from ibtpo.rollout.policy import Policy
from ibtpo.seeding import SAMPLING, TRAIN_PROBLEMS, stream_key, stream_rng
from ibtpo.training import batch as padded
from ibtpo.training import checkpoint as ckpt
from ibtpo.training import packing
from ibtpo.training.distributed import Dist
from ibtpo.training.faults import (
    GuardedReward,
    StopSignals,
    TrainingError,
    log,
    nonfinite_message,
    unscorable_message,
)
from ibtpo.training.logprobs import sequence_logprobs
from ibtpo.training.lora import AdaptersDisabled, add_adapters, is_lora, load_adapter_weights
from ibtpo.training.precision import frozen_copy, resolve_precision
from ibtpo.training.reference import set_step_logprobs
from ibtpo.training.runlock import RunLock
from ibtpo.training.shortfall import shortfall_message


class Trainer:
    """IB-TPO / GRPO / tree baselines, chosen by config (``rollout.scorer``,
    ``advantage.estimator``)."""

    def __init__(self, cfg: Config, *, resume: bool = False, progress: bool = True,
                 task=None, reward_funcs=None):
        """``task`` (an object with ``train_batch`` / ``eval_set``) and ``reward_funcs``
        (TRL-shaped functions) replace ``task.name`` and ``task.reward`` when given (the Python
        API). Set ``init_eval`` before ``train()`` to log a known evaluation of ``train.init`` at
        step 0 instead of evaluating again (runs from one warm-up share it)."""
        self.cfg, self.out = cfg, Path(cfg.train.out_dir)
        kernels.pin(cfg.model.kernels)
        self.init_eval: dict | None = None
        self.dist = Dist(cfg.model.device)
        self.dist.check_prompts_per_step(cfg.train.prompts_per_step, cfg.train.mini_batches)
        self.progress = progress and self.dist.is_main
        torch.manual_seed(cfg.train.seed + self.dist.rank)
        found = self.find_resume_checkpoint(resume)
        self.precision = resolve_precision(cfg)
        self.policy = self.build_policy(reward_funcs)
        self.model = self.policy.model
        self.init_fingerprint = fingerprint(self.model)  # train.init as loaded
        needs_ref = cfg.loss.beta_kl > 0 or (cfg.advantage.estimator == "ibtpo"
                                             and cfg.advantage.ib_prob == "ref")
        self.ref_model = (_reference(self.model, self.precision.frozen_dtype)
                          if needs_ref else None)
        state = self.load_weights(found) if found else None
        self.dist.separate_rollout_model(self.policy, self.precision.frozen_dtype)
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad],
                                           lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.model, self.optimizer = self.dist.prepare(self.model, self.optimizer)
        self.train_forward, self.ref_forward_model = self.model, self.ref_model
        if cfg.train.compile:  # the engine keeps the eager model (decoding gains nothing)
            self.train_forward = torch.compile(self.model, dynamic=True)
            self.ref_forward_model = (torch.compile(self.ref_model, dynamic=True)
                                      if self.ref_model is not None else None)
        warmup = cfg.train.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda i: min(1.0, (i + 1) / warmup) if warmup else 1.0)
        self.task = task if task is not None else load_task(cfg.task)
        self.eval_problems = self.task.eval_set()[: cfg.eval.size]
        self.check_prompts()
        self.estimator = get_estimator(cfg.advantage.estimator)
        a = cfg.advantage
        self.adv_params = AdvParams(beta=a.beta, lam=a.lam, prob_norm=cfg.rollout.prob_norm,
                                    ib_adv_on_zero_var_groups=a.ib_adv_on_zero_var_groups,
                                    ib_prob=a.ib_prob)
        self.problem_rng = stream_rng(cfg.train.seed, TRAIN_PROBLEMS)  # rank 0's prompts are used
        self.step, self.generated_tokens, self.nonfinite_streak = 0, 0, 0
        self.unscorable_streak = 0  # steps in a row whose every reward was None
        self.shortfall_warned = False  # G below B0 + (L-1)·K·Bn said once (training/shortfall.py)
        self.loss_share = 1.0  # this rank's share of the loss denominator (set by micro_batches)
        self.stop = StopSignals()
        if state is not None:
            self.load_state_dict(state, found)
        self.run_lock = RunLock(self.out).acquire() if self.dist.is_main else None  # 1st write
        self.logger = self.open_logger()

    def build_policy(self, reward_funcs) -> Policy:
        """The policy of ``train.init`` on this rank's device, in the run's precision (fp32
        master weights for a 16-bit ``model.dtype``: ``training/precision.py``), its reward
        guarded (``training/faults.py``), with LoRA adapters when ``lora.r > 0``."""
        cfg = self.cfg
        policy = Policy(config_with(cfg, model={"device": str(self.dist.device),
                                                "dtype": self.precision.param_dtype}),
                        cfg.train.init, reward_funcs)
        policy.autocast_dtype = self.precision.rollout_dtype
        policy.reward_fn = GuardedReward(policy.reward_fn, cfg.task.reward_errors, cfg.task.reward)
        if cfg.lora.r > 0:
            policy.replace_model(add_adapters(policy.model, cfg.lora))
        return policy

    # --- one step -------------------------------------------------------------------------------
    def train_step(self) -> dict:
        """Sample P trees, compute step advantages, update the policy; returns the step's
        metrics."""
        t0 = time.perf_counter()
        trees, rollout_metrics = self.rollout(
            self.task.train_batch(self.cfg.train.prompts_per_step, self.problem_rng))
        t1 = time.perf_counter()
        batches, adv_metrics = self.prepare_batches(trees)
        ckpt.fault_point("step:rollout", self.step + 1)
        loss_metrics = self.update(batches)
        t2 = time.perf_counter()
        self.warn_shortfall(trees)
        metrics = self.dist.reduce_metrics(
            {**rollout_metrics, **tree_metrics(trees, self.adv_params.beta,
                                               self.adv_params.prob_norm),
             **adv_metrics, **loss_metrics, "rollout/reward_errors":
             self.policy.reward_fn.take_errors(),
             "train/batch_tokens": sum((j - i) * b.slice(i, j).input_ids.shape[1]
                                       for b in batches for i, j in self.micro_batch_bounds(b)),
             "train/trajectory_tokens": packing.trajectory_tokens(trees),
             "time/rollout_s": t1 - t0, "time/train_s": t2 - t1, "time/step_s": t2 - t0},
            {"prompts": len(trees), "traj": sum(len(t.leaves()) for t in trees),
             "loss": self.loss_share})
        self.step += 1
        self.generated_tokens += int(metrics["rollout/generated_tokens"])
        return {**metrics, "train/step": self.step, "train/generated_tokens": self.generated_tokens,
                "train/lr": self.scheduler.get_last_lr()[0]}

    def rollout(self, problems) -> tuple[list, dict]:
        """This rank's trees of the step's `problems` (every rank's list, as rank 0 drew it)."""
        mine = self.dist.share(list(enumerate(problems)))
        return self.policy.grow_trees(self.cfg, [p for _, p in mine],
                                      [self.tree_key(i) for i, _ in mine])

    def warn_shortfall(self, trees) -> None:
        """Warn once per run, at the first step whose trees (this rank's) hold fewer trajectories
        than B0 + (L-1)·K·Bn, naming the measured G and why (``training/shortfall.py``)."""
        if self.shortfall_warned or not self.dist.is_main:
            return
        text = shortfall_message(self.step + 1, trees, self.cfg)
        if text:
            log.warning("%s", text)
            self.shortfall_warned = True

    def tree_key(self, index: int) -> int:
        """The key of everything random in this step's tree of prompt `index` (of the whole
        step, over every rank): trees do not depend on ranks, batching or scheduling."""
        return stream_key(self.cfg.train.seed, SAMPLING, self.step, index)

    def prepare_batches(self, trees) -> tuple[list, dict]:
        """The step's training batches, one per mini-batch of whole trees
        (``train.mini_batches``), and the advantage metrics. Each batch gets its layout, its old
        log-probs (the rollout's, or recomputed before any update when asked) and its reference
        log-probs; the advantages are computed once, over every tree of the step."""
        groups = split_trees(trees, self.cfg.train.mini_batches)
        batches = [self.layout(group) for group in groups]
        advantages, adv_metrics = self.estimator(trees, self.adv_params)
        out, start = [], 0
        for group, batch in zip(groups, batches):
            out.append(self.assign_advantages(batch, group,
                                              advantages[start:start + len(group)]))
            start += len(group)
        return out, adv_metrics

    def prepare_batch(self, trees):
        """`prepare_batches` of one mini-batch: (the batch of every tree, advantage metrics)."""
        batches, adv_metrics = self.prepare_batches(trees)
        assert len(batches) == 1, "prepare_batch is for train.mini_batches = 1"
        return batches[0], adv_metrics

    def layout(self, trees):
        """The training batch of `trees` before advantages: token layout, old log-probs
        (recomputed when asked), reference log-probs (and the steps' ones for A_IB with pi_ref)."""
        batch = self.make_batch(trees)
        if self.cfg.train.recompute_old_logprobs:
            batch = self.recompute_old_logprobs(batch)
        self.reference_logprobs(batch)
        if self.adv_params.ib_prob == "ref":
            self.fill_step_ref_logprobs(batch, trees)
        return batch

    @torch.no_grad()
    def recompute_old_logprobs(self, batch):
        """The batch with its old log-probs from the training forward (micro-batch by micro-batch,
        as the update runs it), so the first ratio is 1 up to the kernels' determinism."""
        self.model.eval()
        out = self.batch_logprobs(self.train_forward, batch) * batch.trained_mask()
        return dataclasses.replace(batch, old_logprobs=out)  # 0 on prompt and padding

    def make_batch(self, trees):
        """The step's token layout and old log-probs on the device (packed or padded rows)."""
        pad, t = self.policy.tokenizer.pad_token_id, self.cfg.train
        if not t.pack_trees:
            return padded.from_trees(trees, None, pad).to(self.policy.device)
        hidden = getattr(self.policy.model.config, "hidden_size", None) or 512
        batch = packing.pack_trees(trees, pad, t.pack_tokens or hidden, 3.0 * hidden,
                                   t.pack_unroll)
        return batch.to(self.policy.device)

    def assign_advantages(self, batch, trees, advantages):
        """Per-token advantages (padded rows) or loss weights (packed trees) of the batch."""
        module = packing if isinstance(batch, packing.PackedBatch) else padded
        return module.assign_advantages(batch, trees, advantages, self.cfg.loss.agg_mode,
                                        self.cfg.sampling.max_new_tokens)

    def reference_logprobs(self, batch) -> None:
        """Reference log-probs of every token (no gradient), once per step, into
        ``batch.ref_logprobs``; nothing when there is no reference (``loss.beta_kl = 0``)."""
        if self.ref_model is not None:
            batch.ref_logprobs = self.batch_logprobs(self.ref_forward_model, batch)

    def fill_step_ref_logprobs(self, batch, trees) -> None:
        """``node.ref_logprobs`` of every step (A_IB with pi_ref, ``advantage.ib_prob = "ref"``),
        read from this step's reference forward (packed trees or padded rows)."""
        if isinstance(batch, packing.PackedBatch):
            for node, values in packing.node_values(batch, batch.ref_logprobs).items():
                node.ref_logprobs = values.tolist()
        else:
            set_step_logprobs(trees, batch.ref_logprobs.cpu().tolist())

    def forward_logprobs(self, model, mb) -> torch.Tensor:
        """(n, T) log-probs of `model` on a micro-batch, no gradient, in the training forward's
        precision (so recomputed old log-probs give a first ratio of 1)."""
        with torch.no_grad(), self.autocast():
            return sequence_logprobs(model, temperature=self.cfg.sampling.temperature,
                                     entropy=None, **mb.model_inputs())[0]

    def batch_logprobs(self, model, batch) -> torch.Tensor:
        """(N, T) `forward_logprobs` over the whole batch, micro-batch by micro-batch as the
        update runs it; 0 past a micro-batch's width."""
        out = torch.zeros(batch.input_ids.shape, device=batch.input_ids.device)
        for i, j in self.micro_batch_bounds(batch):
            mb = batch.slice(i, j)
            out[i:j, :mb.input_ids.shape[1]] = self.forward_logprobs(model, mb)
        return out

    def autocast(self):
        """Autocast of the training forwards: to ``model.dtype`` with fp32 master weights, to
        bf16 when ``train.autocast = bf16``, else off (``training/precision.py``)."""
        dtype = self.precision.compute_dtype
        return torch.autocast(self.policy.device.type, dtype=dtype or torch.bfloat16,
                              enabled=dtype is not None)

    def update(self, batches: list) -> dict:
        """``train.num_iterations`` passes over the step's mini-batches, one optimizer step per
        mini-batch (over its micro-batches; the ratio leaves 1 from the second step on). A step
        with a non-finite loss or gradient is skipped, and the ones after it."""
        self.model.train()
        metrics: list[dict] = []
        for batch in [b for _ in range(self.cfg.train.num_iterations) for b in batches]:
            if self.optimizer_step(batch, metrics):
                break
        self.model.eval()
        return _mean_metrics(metrics)

    def optimizer_step(self, batch, metrics: list[dict]) -> bool:
        """One optimizer step over `batch` in micro-batches (their metrics appended to `metrics`);
        returns whether it was skipped."""
        self.optimizer.zero_grad(set_to_none=True)
        mbs, finite = list(self.micro_batches(batch)), torch.tensor(True)
        for i, (mb, weight) in enumerate(mbs):
            with self.dist.sync(self.model, last=i == len(mbs) - 1):
                loss, m = self.micro_step(mb)
                self.dist.backward(loss * weight)
            finite = finite & torch.isfinite(loss.detach()).cpu()
            metrics.append(m)
        norm, skipped = self.clip_and_step(bool(finite))
        metrics[-1].update({"train/grad_norm": norm, "train/skipped": float(skipped)})
        return skipped

    def micro_batch_bounds(self, batch) -> list[tuple[int, int]]:
        """Row ranges of at most ``train.micro_batch_size`` rows (padded) or, packed, of at most
        ``train.micro_batch_tokens`` token positions (rows x the longest row among them; at least
        one row)."""
        t, n = self.cfg.train, len(batch)
        if isinstance(batch, packing.PackedBatch):
            return packing.micro_batch_bounds(batch.row_length.tolist(), t.micro_batch_tokens)
        return [(i, min(i + t.micro_batch_size, n)) for i in range(0, n, t.micro_batch_size)]

    def micro_batches(self, batch):
        """Micro-batches, each weighted by its share of the aggregation's denominator over every
        rank, so accumulated (and all-reduced) gradients equal the full global batch's."""
        mode = self.cfg.loss.agg_mode
        local = batch.agg_count(mode)
        total = self.dist.global_sum(local).clamp(min=1)
        self.loss_share = float(local / total)
        for i, j in self.micro_batch_bounds(batch):
            mb = batch.slice(i, j)
            yield mb, mb.agg_count(mode) / total * self.dist.loss_scale()

    def micro_step(self, mb):
        entropy_mode = "grad" if self.cfg.loss.entropy_coef > 0 else "metric"
        with self.autocast():
            logprobs, entropy = sequence_logprobs(self.train_forward, entropy=entropy_mode,
                                                  temperature=self.cfg.sampling.temperature,
                                                  **mb.model_inputs())
        if mb.ref_logprobs is None and self.ref_model is not None:
            mb.ref_logprobs = self.forward_logprobs(self.ref_forward_model, mb)
        lc = self.cfg.loss
        return mb.loss(logprobs, entropy, eps_low=lc.eps_low, eps_high=lc.eps_high,
                       beta_kl=lc.beta_kl, entropy_coef=lc.entropy_coef, agg_mode=lc.agg_mode,
                       max_response_len=self.cfg.sampling.max_new_tokens)

    def clip_and_step(self, finite_loss: bool) -> tuple[torch.Tensor, bool]:
        """Clip and step, unless the loss or the gradient norm is non-finite on any rank; returns
        (grad norm before clipping, skipped)."""
        norm = self.dist.clip_grad_norm(self.model, self.cfg.train.grad_clip or float("inf"))
        if self.dist.any(not (finite_loss and bool(torch.isfinite(norm)))):
            self.optimizer.zero_grad(set_to_none=True)
            return norm.detach(), True
        self.optimizer.step()
        self.scheduler.step()
        self.dist.refresh_rollout_model(self.model, self.policy)
        return norm.detach(), False

    def check_nonfinite(self, metrics: dict) -> None:
        """Count skipped steps in a row; TrainingError at ``train.max_nonfinite_steps``."""
        if not metrics.get("train/skipped"):
            self.nonfinite_streak = 0
            return
        self.nonfinite_streak += 1
        limit = self.cfg.train.max_nonfinite_steps
        text = nonfinite_message(self.step, self.nonfinite_streak, limit,
                                 float(metrics.get("train/grad_norm", float("nan"))))
        if self.dist.is_main:
            log.warning("%s", text)
        if limit and self.nonfinite_streak >= limit:
            raise TrainingError(text + "; stopping: the weights are those before these steps")

    def check_unscorable(self, metrics: dict) -> None:
        """Count steps in a row whose every reward was None (warned about); TrainingError at
        ``train.max_unscorable_steps``."""
        n = metrics.get("rollout/num_trajectories", 0)
        if not n or metrics.get("rollout/unscorable", 0) < n:
            self.unscorable_streak = 0
            return
        self.unscorable_streak += 1
        limit = self.cfg.train.max_unscorable_steps
        text = unscorable_message(self.step, self.unscorable_streak, limit)
        if self.dist.is_main:
            log.warning("%s", text)
        if limit and self.unscorable_streak >= limit:
            raise TrainingError(text + "; stopping")

    # --- the loop -------------------------------------------------------------------------------
    def done(self) -> bool:
        t = self.cfg.train
        return self.generated_tokens >= t.token_budget if t.token_budget else self.step >= t.steps

    def evaluate(self) -> dict:
        """Held-out evaluation on rank 0 (the other ranks wait and get {})."""
        result = (self.policy.evaluate(self.cfg, self.eval_problems, seed=self.cfg.eval.seed)
                  if self.dist.is_main else {})
        self.dist.barrier()
        return result

    def eval_due(self, tokens_before: int) -> bool:
        """Evaluate after this step: every `eval_every` steps, when the generated tokens crossed a
        multiple of `eval_every_tokens` (same points for methods of different step sizes), or at
        the end."""
        t = self.cfg.train
        by_steps = t.eval_every and self.step % t.eval_every == 0
        n = t.eval_every_tokens
        by_tokens = n and self.generated_tokens // n > tokens_before // n
        return bool(by_steps or by_tokens or self.done())

    def train(self) -> dict:
        """Run until ``train.steps`` (or ``train.token_budget`` generated tokens), or until SIGINT
        / SIGTERM (then ``self.stop.signum`` is set); return the last metrics, including a final
        held-out evaluation when the run completed. A checkpoint is written at the end."""
        t = self.cfg.train
        total, done_units = ((t.token_budget, self.generated_tokens) if t.token_budget
                             else (t.steps, self.step))
        last: dict = {}
        try:
            with progress_bar(self.progress, total, done_units, "tokens" if t.token_budget
                              else "steps") as bar, self.stop:
                if self.step == 0:
                    if self.init_eval is None:
                        bar.update(done_units, "evaluating train.init on the held-out set")
                    self.logger.log(0, {"train/step": 0, "train/generated_tokens": 0,
                                        **(self.init_eval or self.evaluate())})
                while not self.done() and not self.dist.any(self.stop.signum is not None):
                    last = self.step_and_record()
                    bar.update(self.generated_tokens if t.token_budget else self.step,
                               _bar_text(last))
                self.save_checkpoint()
        finally:
            self.logger.close()
        return last

    def step_and_record(self) -> dict:
        """One step, then its evaluation when due, its log row, the non-finite check and its
        checkpoint when due; returns its metrics."""
        tokens_before, every = self.generated_tokens, self.cfg.train.ckpt_every
        last = self.train_step()
        if self.eval_due(tokens_before):
            last.update(self.evaluate())
        self.logger.log(self.step, last)
        self.check_nonfinite(last)
        self.check_unscorable(last)
        ckpt.fault_point("step:end", self.step)
        if every and self.step % every == 0:
            self.save_checkpoint()
        return last

    def check_prompts(self) -> None:
        """Every prompt (held-out, and training rows of a dataset) fits the model's context with
        ``sampling.max_new_tokens`` to spare; ValueError naming the dataset otherwise."""
        source, max_new = f"task.name={self.cfg.task.name!r}", self.cfg.sampling.max_new_tokens
        self.policy.check_prompts(self.eval_problems, max_new, f"{source} (held-out)")
        if hasattr(self.task, "train_set"):
            self.policy.check_prompts(self.task.train_set(), max_new, f"{source} (training rows)")

    # --- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Checkpoint of this step in ``{out_dir}/checkpoints`` (crash-safe, the newest
        ``train.keep_checkpoints`` kept); every rank takes part, rank 0 writes. A failed write
        (disk full) raises TrainingError and leaves the earlier checkpoints intact."""
        state = self.state_dict()  # collective: every rank's RNG states
        model_state = self.dist.full_state_dict(self.model)
        path, error = None, None
        if self.dist.is_main:
            try:
                path = ckpt.write_checkpoint(self.out, self.step, lambda d: self.write_files(
                    d, state, model_state), self.cfg.train.keep_checkpoints)
            except OSError as err:
                error = (f"cannot write the checkpoint of step {self.step} in "
                         f"{self.out / ckpt.CKPT_DIR}: {err}; the earlier checkpoints are intact")
        path, error = self.dist.broadcast((path, error))
        if error:
            raise TrainingError(error)
        return path

    def write_files(self, directory: Path, state: dict, model_state: dict) -> None:
        """The files of one checkpoint: HF model and tokenizer, ibtpo.json, trainer state."""
        extra = {"config": self.cfg.to_dict(), "step": self.step, **self.task.settings(),
                 "base_model": self.cfg.train.init, "init_fingerprint": self.init_fingerprint,
                 "fingerprint": fingerprint(self.model, model_state)}
        model = self.dist.unwrap(self.model)
        ckpt.write_model_files(model, self.policy.tokenizer, directory, extra,
                               None if is_lora(model) else model_state)  # LoRA: adapters only
        ckpt.save_state(state, directory / ckpt.STATE_FILE)

    def export(self, out_dir: str | Path) -> Path:
        """The current policy as a plain HF checkpoint (LoRA merged) in ``out_dir``."""
        from ibtpo.export import export_model

        return export_model(self.dist.unwrap(self.model), self.policy.tokenizer, out_dir,
                            {"step": self.step, "base_model": self.cfg.train.init})

    def state_dict(self) -> dict:
        """Everything but the weights, as plain data (every rank's RNG states gathered)."""
        task_state = getattr(self.task, "state_dict", None)
        return {"format": ckpt.STATE_FORMAT, "step": self.step,
                "generated_tokens": self.generated_tokens,
                "nonfinite_streak": self.nonfinite_streak,
                "unscorable_streak": self.unscorable_streak,
                "optimizer": self.dist.optimizer_state_dict(self.model, self.optimizer),
                "scheduler": self.scheduler.state_dict(), "world_size": self.dist.world,
                "rng": self.dist.gather(ckpt.capture_rngs(self)),
                "task": task_state() if task_state else None, "config": self.cfg.to_dict()}

    def find_resume_checkpoint(self, resume: bool) -> Path | None:
        """The checkpoint to resume from (ValueError when there is none), or None for a fresh
        run, which may not start in an out_dir that holds an earlier run's checkpoints."""
        found = ckpt.latest_checkpoint(self.out)
        if resume and found is None:
            raise ValueError(f"--resume: no checkpoint in {self.out / ckpt.CKPT_DIR} (expected "
                             f"step-N directories and a '{ckpt.LATEST}' link)")
        if not resume and found is not None:
            raise ValueError(f"train.out_dir={str(self.out)!r} holds the checkpoints of an earlier "
                             f"run ({found.name}); pass --resume to continue it (`ibtpo train "
                             "--resume` takes the config recorded in its checkpoint; --set "
                             "overrides a field), or choose another out_dir")
        return found

    def load_weights(self, path: Path) -> dict:
        """Read and check the trainer state at ``path``, then load the model weights (before the
        model is wrapped); the reference model stays the init model."""
        state = ckpt.load_state(path / ckpt.STATE_FILE)
        if state["world_size"] != self.dist.world:
            raise ValueError(f"{path}: written by {state['world_size']} process(es); resume it "
                             f"with as many (this run has {self.dist.world}) for an exact resume")
        if is_lora(self.model):
            load_adapter_weights(self.model, path)
        else:
            ckpt.load_model_weights(self.model, path, self.cfg.model.trust_remote_code)
        return state

    def load_state_dict(self, state: dict, path: Path) -> None:
        """Restore counters, optimizer, scheduler, task position and every RNG state."""
        where = str(path / ckpt.STATE_FILE)
        try:
            self.dist.load_optimizer_state_dict(self.model, self.optimizer, state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as err:
            raise ValueError(f"{where}: optimizer or scheduler state does not fit this model and "
                             f"config ({type(err).__name__}: {str(err)[:200]})") from None
        self.step, self.generated_tokens = state["step"], state["generated_tokens"]
        self.nonfinite_streak = int(state.get("nonfinite_streak", 0))
        self.unscorable_streak = int(state.get("unscorable_streak", 0))
        if state.get("task") is not None and hasattr(self.task, "load_state_dict"):
            self.task.load_state_dict(state["task"])
        ckpt.restore_rngs(self, state["rng"][self.dist.rank], where)

    def open_logger(self) -> MetricsLogger | None:
        """The metrics log of rank 0; on resume, rows after the checkpoint's step are dropped
        (they are logged again when those steps are redone)."""
        if not self.dist.is_main:
            return _NullLogger()
        ckpt.truncate_log(self.out / "metrics.jsonl", self.step if self.step else -1)
        t = self.cfg.train
        wandb = (open_wandb(str(self.out), t.wandb_project, t.wandb_mode, self.cfg.to_dict(),
                            resume=self.step > 0) if t.wandb_project else None)
        return MetricsLogger(self.out, tensorboard=t.tensorboard, wandb=wandb,
                             purge_step=self.step + 1 if self.step else 0)


_agg_count = padded.agg_count  # what ``agg_mode`` averages over (tests import it from here)


class _NullLogger:
    """The metrics log of ranks other than 0: writes nothing."""

    def log(self, step: int, metrics: dict) -> None:
        pass

    def close(self) -> None:
        pass


def _reference(model, dtype: torch.dtype | None = None):
    """The reference policy: the base model with the adapters off (LoRA), else a frozen copy
    stored in `dtype` (the frozen copies' dtype; None = the policy's)."""
    if is_lora(model):
        return AdaptersDisabled(model)
    return frozen_copy(model, dtype)


def split_trees(trees: list, n: int) -> list[list]:
    """`trees` in `n` contiguous mini-batches of whole trees, sizes differing by at most one."""
    size, extra = divmod(len(trees), n)
    bounds = [0]
    for i in range(n):
        bounds.append(bounds[-1] + size + (i < extra))
    return [trees[i:j] for i, j in zip(bounds, bounds[1:])]


def _mean_metrics(rows: list[dict]) -> dict:
    keys = {k for r in rows for k in r}
    return {k: float(torch.stack([torch.as_tensor(r[k], dtype=torch.float32) for r in rows
                                  if k in r]).mean()) for k in keys}


def _bar_text(m: dict) -> str:
    """The progress line's figures, each named as in docs/METRICS.md (rollout/reward_mean,
    rollout/eff_rate, tree/ib_score, eval/pass@1)."""
    parts = [f"reward {m.get('rollout/reward_mean', float('nan')):.2f}",
             f"eff_rate {m.get('rollout/eff_rate', float('nan')):.2f}",
             f"ib_score {m.get('tree/ib_score', float('nan')):+.3f}"]
    if "eval/pass@1" in m:
        parts.append(f"held-out pass@1 {m['eval/pass@1']:.2f}")
    return "  ".join(parts)


def config_with(cfg: Config, **sections) -> Config:
    """A copy of ``cfg`` with fields replaced, e.g. ``config_with(cfg, train={"seed": 1})``."""
    cfg = copy.deepcopy(cfg)
    for name, values in sections.items():
        setattr(cfg, name, dataclasses.replace(getattr(cfg, name), **values))
    return cfg
