"""Supervised warm-up: teach the policy the task's format and a first level of skill.

Shape letters: B problems per step, T tokens (prompt + response + EOS, right-padded).

Each step draws `sft.batch_size` training problems (the `sft/problems` stream of `sft.seed`), builds
BOS + prompt + solution + EOS sequences and minimises the mean cross-entropy over the response
tokens and the EOS (never the prompt, never padding). Choices (config keys in brackets):
- AdamW [`sft.lr`, `sft.weight_decay` on matrices only], betas (0.9, 0.95), grad clipping
  [`sft.grad_clip`].
- Learning rate: linear warm-up over [`sft.warmup_steps`], then cosine decay to 10% of the peak.
  The cosine follows whichever budget is further along: steps [`sft.steps`] or wall time
  [`sft.max_minutes`], so a slow machine still anneals before the time limit stops the run
  (runs that hit the time limit are therefore not bit-reproducible).
- Validation: greedy pass@1 on [`sft.eval_size`] *training-distribution* problems (the
  `sft/validation` stream; never the held-out set, which stays untouched for the final figures)
  every [`sft.eval_every`] steps and at the last step.
- Stop [`sft.stop_at_accuracy`, default 0.4]: the warm-up ends at the first validation that
  reaches it (0 = run all [`sft.steps`], which are then a cap). Small models learn multi-step
  chains with a sudden jump (the nano model goes from ~20% to ~90% in about 150 steps, at a step
  that moves by a hundred with the data order), so a fixed step count lands anywhere on that
  jump; stopping on validation accuracy starts RL from the same skill on every machine, and is
  as reproducible as the step count (a function of the seeds, never of wall time).
- A final evaluation (pass@1 and avg@k on `eval.size` held-out problems, `eval.k`,
  `eval.temperature`) and the fingerprint (weights digest, kernels in force [`model.kernels`],
  `ibtpo.models.fingerprint`) are written into the checkpoint's ibtpo.json.
- Log [`sft.log_every`]: `{out_dir}/sft_log.jsonl`, one JSON object per line with `step`,
  `sft/loss` (mean since the last line), `sft/lr`, `sft/tokens_per_s` (non-pad tokens per second
  of training), `time/elapsed_s` (wall time since the start, evaluations included), and
  `sft/val_pass@1`, `sft/val_pass@1/terms_N` on validation steps.
- Right padding under causal attention: real tokens never attend to the padding after them, so
  the forward pass gets no attention mask (sdpa then takes its faster causal path).
Entry point: `run_sft(cfg)`; the output `sft.out_dir` is an HF checkpoint directory.

Figures of the default warm-up: `benchmarks/sft_speed.py`.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ibtpo import kernels
from ibtpo.data import load_task
from ibtpo.data.rewards import task_reward_fn
from ibtpo.evaluation import evaluate, held_out
from ibtpo.models import check_replaceable, encode_prompt, fingerprint, load_model, save_checkpoint
from ibtpo.progress import progress_bar
from ibtpo.seeding import SFT_INIT, SFT_PROBLEMS, SFT_VALIDATION, stream_rng, stream_seed

LOG_FILE = "sft_log.jsonl"
IGNORE_INDEX = -100  # label of tokens not trained on (prompt, padding)
FINAL_LR_FRACTION = 0.1


@dataclass
class SFTBatch:
    """Padded training tensors of one step."""

    input_ids: torch.Tensor  # (B, T) BOS + prompt + response + EOS, right-padded
    attention_mask: torch.Tensor  # (B, T) 1 = real token
    labels: torch.Tensor  # (B, T) token id on response tokens and EOS, IGNORE_INDEX elsewhere
    n_tokens: int  # real (non-pad) tokens


def example_ids(tokenizer, problem) -> tuple[list[int], list[int]]:
    """(prompt ids with BOS, response ids with EOS) of one problem."""
    if not problem.solution:
        raise ValueError(f"problem {problem.prompt!r:.60} has no 'solution'; supervised warm-up "
                         "needs a reference response per problem")
    response = tokenizer(problem.solution, add_special_tokens=False)["input_ids"]
    return encode_prompt(tokenizer, problem.prompt), list(response) + [tokenizer.eos_token_id]


def collate(tokenizer, problems, device) -> SFTBatch:
    """Right-padded batch; labels only on response tokens and EOS."""
    pairs = [example_ids(tokenizer, p) for p in problems]
    width = max(len(a) + len(b) for a, b in pairs)
    ids = torch.full((len(pairs), width), tokenizer.pad_token_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(pairs), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)  # (B, T)
    for i, (prompt, response) in enumerate(pairs):
        n, m = len(prompt), len(response)
        ids[i, :n + m] = torch.tensor(prompt + response)
        labels[i, n:n + m] = torch.tensor(response)
        mask[i, :n + m] = 1
    return SFTBatch(ids.to(device), mask.to(device), labels.to(device), int(mask.sum()))


def lr_at(step: int, fraction: float, cfg) -> float:
    """Learning rate of step `step` (0-based) with `fraction` of the budget used (steps or time)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    start = min(cfg.warmup_steps / cfg.steps, 0.99)
    t = min(max((fraction - start) / (1.0 - start), 0.0), 1.0)
    cosine = 0.5 * (1 + math.cos(math.pi * t))
    return cfg.lr * (FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * cosine)


def make_optimizer(model, cfg) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (embeddings included), none on norms and biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def train_step(model, optimizer, batch: SFTBatch, lr: float, grad_clip: float) -> torch.Tensor:
    """One optimizer step on `batch`; returns the (detached) loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    # right padding + causal attention: no mask needed (see the module docstring)
    out = model(input_ids=batch.input_ids, labels=batch.labels)
    out.loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out.loss.detach()


class Clock:
    """Wall time since the start and the share of the time budget used."""

    def __init__(self, max_minutes: float):
        self.start = time.perf_counter()
        self.limit_s = max_minutes * 60.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def fraction(self) -> float:
        """Share of the time budget used (0 when there is no limit)."""
        return self.elapsed() / self.limit_s if self.limit_s > 0 else 0.0

    def over(self) -> bool:
        return self.limit_s > 0 and self.elapsed() >= self.limit_s


class Stats:
    """Loss and throughput accumulated between two log lines."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.losses, self.tokens, self.seconds = [], 0, 0.0

    def add(self, loss: torch.Tensor, tokens: int, seconds: float) -> None:
        self.losses.append(loss)
        self.tokens += tokens
        self.seconds += seconds

    def flush(self) -> dict:
        """Mean loss and tokens/s since the last flush; resets."""
        out = {"sft/loss": torch.stack(self.losses).mean().item() if self.losses else float("nan"),
               "sft/tokens_per_s": self.tokens / self.seconds if self.seconds > 0 else 0.0}
        self.reset()
        return out


def eval_metrics(result: dict) -> dict:
    """Log entries of a periodic evaluation."""
    out = {"sft/val_pass@1": result["pass@1"]}
    out.update({f"sft/val_pass@1/terms_{n}": fig["pass@1"]
                for n, fig in result["by_terms"].items()})
    return out


def check_solutions(task, name: str) -> None:
    """SFT needs reference responses: ValueError when the task's problems have none."""
    sample = task.train_batch(8, random.Random(0))
    if any(not p.solution for p in sample):
        raise ValueError(f"task {name!r}: problems have no 'solution' column; supervised "
                         "warm-up needs a reference response per problem")


class SFTRun:
    """State of one warm-up run: model, optimizer, data, clock, log."""

    def __init__(self, cfg, progress: bool):
        self.cfg, self.s = cfg, cfg.sft
        kernels.pin(cfg.model.kernels)
        self.model, self.tokenizer = load_model(cfg.model.name_or_path, cfg.model.device,
                                                cfg.model.dtype,
                                                seed=stream_seed(cfg.sft.seed, SFT_INIT),
                                                trust_remote_code=cfg.model.trust_remote_code)
        self.device = next(self.model.parameters()).device
        self.task = load_task(cfg.task)
        check_solutions(self.task, cfg.task.name)
        self.reward_fn = task_reward_fn(cfg.task)
        self.val_problems = self.task.train_batch(self.s.eval_size,
                                                  stream_rng(self.s.seed, SFT_VALIDATION))
        self.optimizer = make_optimizer(self.model, self.s)
        self.rng = stream_rng(self.s.seed, SFT_PROBLEMS)
        self.out_dir = Path(self.s.out_dir)
        check_replaceable(self.out_dir, [LOG_FILE])  # fail now, not after training
        self.progress = progress
        self.history: list[dict] = []

    def step(self, step: int, clock: Clock, stats: Stats) -> None:
        """Draw a batch and take one optimizer step (0-based `step`)."""
        t0 = time.perf_counter()
        self.model.train()
        problems = self.task.train_batch(self.s.batch_size, self.rng)
        batch = collate(self.tokenizer, problems, self.device)
        fraction = max(step / self.s.steps, clock.fraction())
        self.lr = lr_at(step, fraction, self.s)
        loss = train_step(self.model, self.optimizer, batch, self.lr, self.s.grad_clip)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        stats.add(loss, batch.n_tokens, time.perf_counter() - t0)

    def periodic_eval(self) -> dict:
        """Greedy pass@1 on the validation problems."""
        result = evaluate(self.model, self.tokenizer, self.val_problems, self.reward_fn, k=0,
                          max_new_tokens=self.cfg.sampling.max_new_tokens,
                          batch_size=self.cfg.eval.batch_size)
        return eval_metrics(result)

    def record(self, log, step: int, clock: Clock, stats: Stats, evaluate_now: bool) -> dict:
        """Write one log line (with evaluation figures when `evaluate_now`)."""
        line = {"step": step, **stats.flush(), "sft/lr": self.lr}
        if evaluate_now:
            line.update(self.periodic_eval())
        line["time/elapsed_s"] = clock.elapsed()
        log.write(json.dumps(line) + "\n")
        log.flush()
        self.history.append(line)
        return line

    def reached_target(self, line: dict) -> bool:
        """Whether this log line's validation reached `sft.stop_at_accuracy` (when it is on)."""
        target = self.s.stop_at_accuracy
        return target > 0 and line.get("sft/val_pass@1", -1.0) >= target

    def should_eval(self, step: int, last: bool) -> bool:
        return last or (self.s.eval_every > 0 and step % self.s.eval_every == 0)

    def train(self) -> int:
        """The training loop; returns the number of steps taken."""
        clock, stats, step = Clock(self.s.max_minutes), Stats(), 0
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / LOG_FILE, "w") as log, \
                progress_bar(self.progress, self.s.steps, description="sft") as bar:
            while step < self.s.steps and not clock.over():
                self.step(step, clock, stats)
                step += 1
                last = step == self.s.steps or clock.over()
                if step % self.s.log_every == 0 or last or self.should_eval(step, last):
                    line = self.record(log, step, clock, stats, self.should_eval(step, last))
                    bar.update(step, describe(line))
                    if self.reached_target(line):
                        break
        self.elapsed = clock.elapsed()
        return step

    def finish(self, steps: int) -> dict:
        """Final held-out evaluation, then the checkpoint; returns the final metrics."""
        c = self.cfg
        problems = held_out(self.task, c.eval.size)
        result = evaluate(self.model, self.tokenizer, problems, self.reward_fn, k=c.eval.k,
                          temperature=c.eval.temperature, max_new_tokens=c.sampling.max_new_tokens,
                          batch_size=c.eval.batch_size, seed=c.eval.seed)
        final = {"steps": steps, "train_seconds": self.elapsed, **result,
                 "loss": next((h["sft/loss"] for h in reversed(self.history)), None),
                 "fingerprint": fingerprint(self.model)}
        extra = {**self.task.settings(), "model": c.to_dict()["model"],
                 "sft": c.to_dict()["sft"], "final_eval": final}
        save_checkpoint(self.model, self.tokenizer, self.out_dir, extra,
                        files=[self.out_dir / LOG_FILE])
        return final


def describe(line: dict) -> str:
    """Progress-bar text of a log line."""
    text = f"loss {line['sft/loss']:.3f} lr {line['sft/lr']:.1e}"
    if "sft/val_pass@1" in line:
        text += f" val {line['sft/val_pass@1']:.2f}"
    return text


def run_sft(cfg, progress: bool = True) -> dict:
    """Supervised warm-up with `cfg` (see the module docstring); returns the final metrics.

    The metrics hold `steps`, `train_seconds`, the final `loss`, and the held-out evaluation
    (`pass@1`, `avg@k`, `by_terms`, ...); the checkpoint is written to `cfg.sft.out_dir`.
    """
    run = SFTRun(cfg, progress)
    steps = run.train()
    final = run.finish(steps)
    final["history"] = run.history
    return final
