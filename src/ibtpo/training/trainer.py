"""The RL loop (ALGORITHM.md §3–5): sample trees -> advantages -> padded batch -> clipped loss.

Shapes: ``P`` prompts per step (``train.prompts_per_step``), ``G`` trajectories per prompt,
``N`` sequences in a batch (one per trajectory), ``T`` tokens (prompt + response, right-padded).

The trainer owns the policy, the frozen reference (only loaded when ``loss.beta_kl > 0`` or A_IB
uses the reference policy's step probabilities, ``advantage.ib_prob = "ref"``; with LoRA,
``lora.r > 0``, the same model with its adapters disabled), the optimizer (over the parameters
that train: the adapters only with LoRA), the step counter and the RNG streams; everything else is
a named call into the core. With ``train.recompute_old_logprobs`` the old log-probs of the batch
are recomputed with the training forward before the update (the trees keep the sampler's, which
the advantages and IB-Scores use).
Checkpoints (``{train.out_dir}/checkpoint``) hold the HF model and tokenizer, the optimizer, the RNG
states, the step, the generated-token count and the config; they are written atomically.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from ibtpo.config import Config
from ibtpo.core.advantages import AdvParams, get_estimator
from ibtpo.core.losses import policy_loss
from ibtpo.data import load_task
from ibtpo.metrics import MetricsLogger, tree_metrics
from ibtpo.models import save_checkpoint
from ibtpo.progress import progress_bar
from ibtpo.rollout.policy import Policy
from ibtpo.seeding import BRANCHING, SAMPLING, TRAIN_PROBLEMS, stream_generator, stream_rng
from ibtpo.training.batch import Batch, from_trees
from ibtpo.training.logprobs import sequence_logprobs
from ibtpo.training.lora import AdaptersDisabled, add_adapters, is_lora, load_adapter_weights
from ibtpo.training.reference import fill_ref_logprobs

STATE_FILE = "trainer_state.pt"




class Trainer:
    """IB-TPO / GRPO / tree baselines, chosen by config (``rollout.scorer``, ``advantage.estimator``)."""

    def __init__(self, cfg: Config, *, resume: bool = False, progress: bool = True, task=None,
                 reward_funcs=None):
        """``task`` (an object with ``train_batch`` / ``eval_set``) and ``reward_funcs`` (TRL-shaped
        functions) replace ``task.name`` and ``task.reward`` when given (the Python API)."""
        self.cfg, self.progress = cfg, progress
        self.out = Path(cfg.train.out_dir)
        torch.manual_seed(cfg.train.seed)
        self.policy = Policy(cfg, cfg.train.init, reward_funcs)
        if cfg.lora.r > 0:
            self.policy.replace_model(add_adapters(self.policy.model, cfg.lora))
        self.model = self.policy.model
        needs_ref = cfg.loss.beta_kl > 0 or (cfg.advantage.estimator == "ibtpo"
                                             and cfg.advantage.ib_prob == "ref")
        self.ref_model = _reference(self.model) if needs_ref else None
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad],
                                           lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        warmup = cfg.train.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda i: min(1.0, (i + 1) / warmup) if warmup else 1.0)
        self.task = task if task is not None else load_task(cfg.task)
        self.eval_problems = self.task.eval_set()[: cfg.eval.size]
        self.estimator = get_estimator(cfg.advantage.estimator)
        a = cfg.advantage
        self.adv_params = AdvParams(beta=a.beta, lam=a.lam, prob_norm=cfg.rollout.prob_norm,
                                    ib_adv_on_zero_var_groups=a.ib_adv_on_zero_var_groups,
                                    ib_prob=a.ib_prob)
        seed = cfg.train.seed
        self.problem_rng = stream_rng(seed, TRAIN_PROBLEMS)  # which prompts, step after step
        self.rng = stream_rng(seed, BRANCHING)  # tie-breaking and the random scorer
        self.generator = stream_generator(seed, SAMPLING, self.policy.device)  # token sampling
        self.step, self.generated_tokens = 0, 0
        if resume:
            self.load_checkpoint(self.out / "checkpoint")
        self.logger = MetricsLogger(self.out, tensorboard=cfg.train.tensorboard)

    # --- one step -------------------------------------------------------------------------------
    def train_step(self) -> dict:
        """Sample P trees, compute step advantages, update the policy; returns the step's metrics."""
        t0 = time.perf_counter()
        problems = self.task.train_batch(self.cfg.train.prompts_per_step, self.problem_rng)
        trees, rollout_metrics = self.policy.grow_trees(self.cfg, problems, self.rng, self.generator)
        if self.adv_params.ib_prob == "ref":
            fill_ref_logprobs(self.ref_model, trees, self.policy.tokenizer.pad_token_id,
                              self.cfg.sampling.temperature, self.cfg.train.micro_batch_size)
        advantages, adv_metrics = self.estimator(trees, self.adv_params)
        batch = from_trees(trees, advantages, self.policy.tokenizer.pad_token_id)
        t1 = time.perf_counter()
        batch = batch.to(self.policy.device)
        if self.cfg.train.recompute_old_logprobs:
            batch = self.recompute_old_logprobs(batch)
        loss_metrics = self.update(batch)
        t2 = time.perf_counter()
        self.step += 1
        self.generated_tokens += int(rollout_metrics["rollout/generated_tokens"])
        return {**rollout_metrics, **tree_metrics(trees, self.adv_params.beta,
                                                  self.adv_params.prob_norm),
                **adv_metrics, **loss_metrics, "train/step": self.step,
                "train/generated_tokens": self.generated_tokens, "train/lr": self.scheduler.get_last_lr()[0],
                "time/rollout_s": t1 - t0, "time/train_s": t2 - t1, "time/step_s": t2 - t0}

    @torch.no_grad()
    def recompute_old_logprobs(self, batch: Batch) -> Batch:
        """The batch with its old log-probs from the training forward (micro-batch by micro-batch,
        as the update runs it), so the first ratio is 1 up to the kernels' determinism."""
        self.model.eval()
        size, temp, parts = self.cfg.train.micro_batch_size, self.cfg.sampling.temperature, []
        for i in range(0, len(batch), size):
            mb = batch.slice(i, min(i + size, len(batch)))
            logprobs, _ = sequence_logprobs(self.model, mb.input_ids, mb.attention_mask, temp,
                                            entropy=None)
            parts.append(logprobs * mb.response_mask)  # (n, T): 0 on prompt and padding
        return dataclasses.replace(batch, old_logprobs=torch.cat(parts))

    def update(self, batch: Batch) -> dict:
        """``train.num_iterations`` optimizer steps, each over the whole batch in micro-batches."""
        self.model.train()
        metrics: list[dict] = []
        for _ in range(self.cfg.train.num_iterations):
            self.optimizer.zero_grad(set_to_none=True)
            for mb, weight in self.micro_batches(batch):
                loss, m = self.micro_step(mb)
                (loss * weight).backward()
                metrics.append(m)
            metrics[-1]["train/grad_norm"] = self.clip_and_step()
        self.model.eval()
        return _mean_metrics(metrics)

    def micro_batches(self, batch: Batch):
        """Slices of at most ``train.micro_batch_size`` rows, each weighted by its share of the
        aggregation's denominator, so accumulated gradients equal the full-batch loss's."""
        size, n, mode = self.cfg.train.micro_batch_size, len(batch), self.cfg.loss.agg_mode
        total = _agg_count(batch.response_mask, mode).clamp(min=1)
        for i in range(0, n, size):
            mb = batch.slice(i, min(i + size, n))
            yield mb, _agg_count(mb.response_mask, mode) / total

    def micro_step(self, mb: Batch):
        temp = self.cfg.sampling.temperature
        entropy_mode = "grad" if self.cfg.loss.entropy_coef > 0 else "metric"
        logprobs, entropy = sequence_logprobs(self.model, mb.input_ids, mb.attention_mask, temp,
                                              entropy=entropy_mode)
        ref_logprobs = None
        if self.ref_model is not None:
            with torch.no_grad():
                ref_logprobs, _ = sequence_logprobs(self.ref_model, mb.input_ids,
                                                    mb.attention_mask, temp, entropy=None)
        lc = self.cfg.loss
        return policy_loss(logprobs, mb.old_logprobs, mb.advantages, mb.response_mask,
                           eps_low=lc.eps_low, eps_high=lc.eps_high, ref_logprobs=ref_logprobs,
                           beta_kl=lc.beta_kl, entropy=entropy, entropy_coef=lc.entropy_coef,
                           agg_mode=lc.agg_mode, max_response_len=self.cfg.sampling.max_new_tokens)

    def clip_and_step(self) -> torch.Tensor:
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.cfg.train.grad_clip or float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        self.optimizer.step()
        self.scheduler.step()
        return norm.detach()

    # --- the loop -------------------------------------------------------------------------------
    def done(self) -> bool:
        t = self.cfg.train
        return self.generated_tokens >= t.token_budget if t.token_budget else self.step >= t.steps

    def evaluate(self) -> dict:
        return self.policy.evaluate(self.cfg, self.eval_problems, seed=self.cfg.eval.seed)

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
        """Run until ``train.steps`` (or ``train.token_budget`` generated tokens); return the last
        metrics, including a final held-out evaluation."""
        t = self.cfg.train
        total, done_units = ((t.token_budget, self.generated_tokens) if t.token_budget
                             else (t.steps, self.step))
        last: dict = {}
        with progress_bar(self.progress, total, done_units, "tokens" if t.token_budget
                          else "steps") as bar:
            if self.step == 0:
                self.logger.log(0, {"train/step": 0, "train/generated_tokens": 0,
                                    **self.evaluate()})
            while not self.done():
                tokens_before = self.generated_tokens
                last = self.train_step()
                if self.eval_due(tokens_before):
                    last.update(self.evaluate())
                self.logger.log(self.step, last)
                if t.ckpt_every and self.step % t.ckpt_every == 0:
                    self.save_checkpoint()
                bar.update(self.generated_tokens if t.token_budget else self.step,
                           _bar_text(last))
        self.save_checkpoint()
        self.logger.close()
        return last

    # --- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self, path: Path | None = None) -> Path:
        """Write model, tokenizer, optimizer, RNG states, counters and config; atomic swap."""
        path = Path(path or self.out / "checkpoint")
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".state-") as tmp:
            state_file = Path(tmp) / STATE_FILE
            torch.save(self.state_dict(), state_file)
            save_checkpoint(self.model, self.policy.tokenizer, path,
                            {"config": self.cfg.to_dict(), "step": self.step,
                             "base_model": self.cfg.train.init}, files=[state_file])
        return path

    def export(self, out_dir: str | Path) -> Path:
        """The current policy as a plain HF checkpoint (LoRA merged) in ``out_dir``."""
        from ibtpo.export import export_model

        return export_model(self.model, self.policy.tokenizer, out_dir,
                            {"step": self.step, "base_model": self.cfg.train.init})

    def state_dict(self) -> dict:
        return {"step": self.step, "generated_tokens": self.generated_tokens,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "python_rng": self.rng.getstate(),
                "problem_rng": self.problem_rng.getstate(),
                "torch_generator": self.generator.get_state(),
                "torch_rng": torch.get_rng_state(), "config": self.cfg.to_dict()}

    def load_checkpoint(self, path: Path) -> None:
        """Restore weights and trainer state from ``path`` (the reference stays the init model)."""
        path = Path(path)
        state_file = path / STATE_FILE
        if not state_file.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {path} (expected {STATE_FILE})")
        if is_lora(self.model):
            load_adapter_weights(self.model, path)
        else:
            from transformers import AutoModelForCausalLM

            loaded = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
            self.model.load_state_dict(loaded.state_dict())
        state = torch.load(state_file, map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.generated_tokens = state["step"], state["generated_tokens"]
        self.rng.setstate(state["python_rng"])
        self.problem_rng.setstate(state["problem_rng"])
        self.generator.set_state(state["torch_generator"])
        torch.set_rng_state(state["torch_rng"])


def _agg_count(response_mask: torch.Tensor, agg_mode: str) -> torch.Tensor:
    """What ``agg_mode`` averages over: trained tokens, rows with a trained token, or rows."""
    if agg_mode == "token-mean":
        return response_mask.sum()
    if agg_mode == "seq-mean-token-mean":
        return (response_mask.sum(-1) > 0).sum()
    return torch.tensor(response_mask.shape[0])


def _reference(model):
    """The reference policy: the base model with the adapters off (LoRA), else a frozen copy."""
    if is_lora(model):
        return AdaptersDisabled(model)
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref


def _mean_metrics(rows: list[dict]) -> dict:
    keys = {k for r in rows for k in r}
    return {k: float(torch.stack([torch.as_tensor(r[k], dtype=torch.float32) for r in rows
                                  if k in r]).mean()) for k in keys}


def _bar_text(m: dict) -> str:
    parts = [f"reward {m.get('rollout/reward_mean', float('nan')):.2f}",
             f"eff {m.get('rollout/eff_rate', float('nan')):.2f}",
             f"ib {m.get('tree/ib_score', float('nan')):+.3f}"]
    if "eval/pass@1" in m:
        parts.append(f"eval {m['eval/pass@1']:.2f}")
    return "  ".join(parts)


def config_with(cfg: Config, **sections) -> Config:
    """A copy of ``cfg`` with fields replaced, e.g. ``config_with(cfg, train={"seed": 1})``."""
    cfg = copy.deepcopy(cfg)
    for name, values in sections.items():
        setattr(cfg, name, dataclasses.replace(getattr(cfg, name), **values))
    return cfg
