"""A long run: resident memory and step time over 1,000 RL steps of a small model.

    .venv/bin/python benchmarks/long_run.py [--steps 1000] [--config ibtpo] [--model nano]
        [--prompts 4] [--max-new-tokens 24] [--warmup 100] [--every 50] [--json FILE]

The whole training loop runs (`Trainer.train`): rollouts, updates, JSONL and TensorBoard logs,
held-out evaluation and a crash-safe checkpoint every `--every` steps (the newest 2 kept), in a
temp dir. After each step the process's resident set size (RSS) is read. Reported: RSS and median
step time per window of `--every` steps, and the RSS growth from the end of the warm-up (step
`--warmup`) to the last step. Target (issue 9): growth <= 5%.
Defaults keep it cheap (nano at random init, whose responses run to the length limit:
4 prompts x IBTree (2, 3, 1, 1) x 24 tokens per step); ~0.1-0.2 s a step on a 2-core CPU, a
few minutes in all.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import psutil

from ibtpo.config import load_config, resolve_config_path
from ibtpo.training.trainer import Trainer


class MeasuredTrainer(Trainer):
    """A Trainer that records (step, RSS bytes, step seconds) after every step."""

    def train_step(self) -> dict:
        t0 = time.perf_counter()
        metrics = super().train_step()
        self.trace.append((self.step, psutil.Process().memory_info().rss,
                           time.perf_counter() - t0))
        return metrics


def run(args, out: str) -> list[tuple[int, int, float]]:
    cfg = load_config([resolve_config_path(args.config)], [
        f"train.init={args.model}", f"train.out_dir={out}", f"train.steps={args.steps}",
        f"train.prompts_per_step={args.prompts}", f"sampling.max_new_tokens={args.max_new_tokens}",
        "rollout.b0=2", "rollout.rounds=3", f"train.ckpt_every={args.every}",
        f"train.eval_every={args.every}", "train.keep_checkpoints=2", "eval.size=16", "eval.k=1",
        "task.eval_size=200"])
    trainer = MeasuredTrainer(cfg, progress=False)
    trainer.trace = []
    trainer.train()
    return trainer.trace


def windows(trace, every: int) -> list[dict]:
    rows = []
    for start in range(0, len(trace), every):
        part = trace[start:start + every]
        rows.append({"steps": f"{part[0][0]}-{part[-1][0]}", "rss_mb": part[-1][1] / 2**20,
                     "step_s_median": statistics.median(t for _, _, t in part)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--config", default="ibtpo")
    p.add_argument("--model", default="nano", help="preset or checkpoint dir")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--warmup", type=int, default=100, help="steps before the RSS baseline")
    p.add_argument("--every", type=int, default=50, help="report window, checkpoint and eval")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as out:
        trace = run(args, out)
    base = next(rss for step, rss, _ in trace if step >= min(args.warmup, len(trace)))
    growth = (trace[-1][1] - base) / base
    table = windows(trace, args.every)
    print(f"{'steps':>10s} {'RSS MB':>8s} {'median step s':>14s}")
    for r in table:
        print(f"{r['steps']:>10s} {r['rss_mb']:8.1f} {r['step_s_median']:14.3f}")
    verdict = "OK" if growth <= 0.05 else "ABOVE TARGET"
    print(f"RSS after warm-up (step {args.warmup}): {base / 2**20:.1f} MB; at step "
          f"{trace[-1][0]}: {trace[-1][1] / 2**20:.1f} MB; growth {100 * growth:+.2f}% "
          f"(target <= 5%: {verdict}); peak {max(r for _, r, _ in trace) / 2**20:.1f} MB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "windows": table, "growth": growth,
                       "rss_base_mb": base / 2**20, "rss_end_mb": trace[-1][1] / 2**20}, f,
                      indent=2)


if __name__ == "__main__":
    main()
