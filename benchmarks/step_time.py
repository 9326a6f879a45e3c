"""Median seconds per RL training step, GRPO (independent, G = 8) vs IB-TPO ((4, 9, 1, 1)).

    .venv/bin/python benchmarks/step_time.py [--model DIR] [--steps 5] [--prompts 16]

Uses the warm-up checkpoint ``runs/demo/sft`` when present (as ``make demo`` leaves it), else the
default ``tiny`` preset at random init (whose responses run to the length limit: a pessimistic
case). Both methods run on the same model and prompts, one after the other in this process.
Target (issue 4): a GRPO step with 16 prompts x 8 takes at most 3 s on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from ibtpo.config import load_config, resolve_config_path
from ibtpo.training.trainer import Trainer

DEFAULT_MODEL = "runs/demo/sft"


def measure(name: str, model: str, steps: int, prompts: int, out: str) -> dict:
    cfg = load_config([resolve_config_path(name)],
                      [f"train.init={model}", f"train.prompts_per_step={prompts}",
                       f"train.out_dir={out}/{name}", "train.tensorboard=false"])
    trainer = Trainer(cfg, progress=False)
    trainer.train_step()  # warm-up step, not timed
    rows = [trainer.train_step() for _ in range(steps)]
    med = {k: statistics.median(r[k] for r in rows)
           for k in ("time/step_s", "time/rollout_s", "time/train_s",
                     "rollout/generated_tokens", "rollout/num_trajectories")}
    med["tokens_per_s"] = med["rollout/generated_tokens"] / med["time/rollout_s"]
    return med


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=16)
    args = parser.parse_args()
    model = args.model or (DEFAULT_MODEL if Path(DEFAULT_MODEL, "ibtpo.json").is_file() else "tiny")
    print(f"model: {model}   prompts/step: {args.prompts}   torch threads: "
          f"{torch.get_num_threads()}   timed steps: {args.steps} (median)")
    print(f"{'method':8s} {'step s':>8s} {'rollout s':>10s} {'update s':>9s} {'gen tokens':>11s} "
          f"{'traj':>6s} {'gen tok/s':>10s}")
    with tempfile.TemporaryDirectory() as out:
        for name in ("grpo", "ibtpo"):
            m = measure(name, model, args.steps, args.prompts, out)
            print(f"{name:8s} {m['time/step_s']:8.2f} {m['time/rollout_s']:10.2f} "
                  f"{m['time/train_s']:9.2f} {m['rollout/generated_tokens']:11.0f} "
                  f"{m['rollout/num_trajectories']:6.0f} {m['tokens_per_s']:10.0f}")


if __name__ == "__main__":
    main()
