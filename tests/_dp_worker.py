"""Worker of test_distributed.py: run it alone (1 process) or under `accelerate launch` (2).

    python tests/_dp_worker.py OUT INIT
    accelerate launch --multi_gpu --num_processes 2 ... tests/_dp_worker.py OUT INIT

Part 1: three training steps (trees do not depend on the number of processes: each is keyed by
its step and its prompt's index in the step, `Trainer.tree_key`), one step per loss
aggregation mode, with micro-batches of 3 rows in steps 2 and 3 (packed trees: one tree each; so
ranks run different numbers of micro-batches); after each step rank 0 saves the all-reduced
gradients, the weights and the metrics to OUT/steps.pt, and every rank writes how many prompts it
grew to OUT/rank-R.json.
Part 2 (under accelerate only, flag --loop): the real loop with sampling: 2 steps with a checkpoint
at each, then a resume to step 3, in OUT/loop.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ibtpo.config import load_config, resolve_config_path
from ibtpo.training.trainer import Trainer

SETTINGS = ["task.terms=[2]", "task.max_operand=9", "task.eval_size=30", "eval.size=4", "eval.k=1",
            "sampling.max_new_tokens=16", "train.tensorboard=false", "train.eval_every=0",
            "train.prompts_per_step=4", "rollout.b0=2", "rollout.rounds=3", "train.lr=1e-3",
            "train.pack_tokens=1"]  # packed trees, one per row: a row is the same on any rank
MODES = [("seq-mean-token-mean", 64), ("token-mean", 3), ("seq-mean-token-sum-norm", 3)]


def count_grown(trainer: Trainer):
    """Count the prompts this rank grows trees for (in `trainer.grown`)."""
    grow = trainer.policy.grow_trees

    def grow_counted(cfg, problems, tree_keys):
        trainer.grown = getattr(trainer, "grown", 0) + len(problems)
        return grow(cfg, problems, tree_keys)

    trainer.policy.grow_trees = grow_counted


def fixed_tree_steps(out: Path, init: str) -> None:
    cfg = load_config([resolve_config_path("ibtpo")],
                      SETTINGS + [f"train.init={init}", f"train.out_dir={out / 'steps'}"])
    trainer = Trainer(cfg, progress=False)
    count_grown(trainer)
    results = []
    for mode, micro in MODES:
        trainer.cfg.loss.agg_mode, trainer.cfg.train.micro_batch_size = mode, micro
        trainer.cfg.train.micro_batch_tokens = micro * 40  # 3: one tree per micro-batch
        metrics = trainer.train_step()
        model = trainer.dist.unwrap(trainer.model)
        results.append({"grads": [p.grad.detach().clone() for p in model.parameters()],
                        "params": [p.detach().clone() for p in model.parameters()],
                        "metrics": {k: float(v) for k, v in metrics.items()}})
    (out / f"rank-{trainer.dist.rank}.json").write_text(json.dumps({"prompts": trainer.grown}))
    if trainer.dist.is_main:
        torch.save(results, out / "steps.pt")


def loop_with_resume(out: Path, init: str) -> None:
    run = SETTINGS + [f"train.init={init}", f"train.out_dir={out / 'loop'}", "train.ckpt_every=1"]
    config = resolve_config_path("grpo")
    Trainer(load_config([config], run + ["train.steps=2"]), progress=False).train()
    resumed = Trainer(load_config([config], run + ["train.steps=3"]), resume=True, progress=False)
    assert resumed.step == 2, resumed.step
    resumed.train()


if __name__ == "__main__":
    out_dir, init_dir = Path(sys.argv[1]), sys.argv[2]
    fixed_tree_steps(out_dir, init_dir)
    if "--loop" in sys.argv:
        loop_with_resume(out_dir, init_dir)
