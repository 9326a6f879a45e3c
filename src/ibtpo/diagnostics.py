"""``ibtpo score``: the IB-Score diagnostics (ALGORITHM.md §2) of any policy on any dataset.

Grows IBTrees (``rollout.*``; by default the IB scorer with (4, 9, 1, 1)) on ``eval.size``
held-out prompts, ``train.prompts_per_step`` at a time, and reports the tree metrics of all of
them together: Eff-Rate, Avg-Rate, IB-Score over branch candidates and at the root, ``cov``,
``tsallis``, trajectories per 1k generated tokens. No parameter is updated.
"""

from __future__ import annotations

import json
from pathlib import Path

from ibtpo.config import Config
from ibtpo.data import load_task
from ibtpo.metrics import tree_metrics
from ibtpo.progress import progress_bar
from ibtpo.rollout.policy import Policy
from ibtpo.seeding import SAMPLING, stream_key


def run_score(cfg: Config, model_path: str, out_json: str | None = None,
              progress: bool = True) -> dict:
    policy = Policy(cfg, model_path)
    problems = load_task(cfg.task).eval_set()[: cfg.eval.size]
    policy.check_prompts(problems, cfg.sampling.max_new_tokens,
                         f"task.name={cfg.task.name!r} (held-out)")
    chunk, trees, generated = cfg.train.prompts_per_step, [], 0
    with progress_bar(progress, len(problems), unit="prompts", description="scoring") as bar:
        for i in range(0, len(problems), chunk):
            keys = [stream_key(cfg.train.seed, SAMPLING, "score", j)
                    for j in range(i, min(i + chunk, len(problems)))]
            new, m = policy.grow_trees(cfg, problems[i:i + chunk], keys)
            trees += new
            generated += int(m["rollout/generated_tokens"])
            bar.update(len(trees))
    result = {"model": str(model_path), "prompts": len(trees), "generated_tokens": generated,
              **tree_metrics(trees, cfg.advantage.beta, cfg.rollout.prob_norm)}
    if out_json:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(result, indent=2))
    return result
