"""Token efficiency of IBTree vs independent sampling (ALGORITHM.md §3; paper: ≈1.5×).

    .venv/bin/python benchmarks/rollout.py [--model PATH_OR_PRESET] [--warmup-steps N]

Grows trees for the same prompts of the built-in arithmetic task with IBTree (B0, L, K, Bn) =
(4, 9, 1, 1) and with independent sampling (G = 8), and prints medians over repeats of:
trajectories per 1k generated tokens, generated tokens, wall time, mean reward, steps per
trajectory, and the engine's throughput. Target: IBTree ≥ 1.4× the trajectories per token of
independent sampling.

Model: `--model` (a checkpoint directory or a preset); default runs/demo/sft when it exists, else a
random-init "tiny" preset. A random-init model almost never emits "\\n\\n", so its responses
are one step and every branch starts at the root: the ratio is then ≈ 1. `--warmup-steps N` first
trains the model N teacher-forced steps on the task's reference solutions (a quick stand-in for
`ibtpo sft`) so that responses have steps.

"ibtree, no root" is the same IBTree with `branch_from_root=False` (ALGORITHM.md §3 choice): every
branch then shares at least one step with an earlier trajectory.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import torch

from ibtpo.config import TaskConfig
from ibtpo.data.arithmetic import ArithmeticTask, verify
from ibtpo.models import encode_prompt, load_model
from ibtpo.rollout.engine import Engine, SamplingParams
from ibtpo.rollout.sampler import RolloutParams, sample_trees

METHODS = {
    "independent G=8": dict(scorer="independent", b0=8, rounds=1),
    "ibtree (4,9,1,1)": dict(scorer="ib", b0=4, rounds=9, k=1, bn=1),
    "ibtree, no root": dict(scorer="ib", b0=4, rounds=9, k=1, bn=1, branch_from_root=False),
}


def parse_args() -> argparse.Namespace:
    default = "runs/demo/sft" if os.path.isdir("runs/demo/sft") else "tiny"
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=default, help=f"checkpoint dir or preset (default {default})")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--warmup-steps", type=int, default=0,
                   help="teacher-forced steps on reference solutions first (0 = none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0 = torch's default; 1 is steadier on a busy machine)")
    return p.parse_args()


def reward_fn(prompts, completions, answer, **_):
    return [verify(c, a) for c, a in zip(completions, answer)]


def sft_batch(tokenizer, problems) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels), both (N, T): prompt + solution + EOS, loss on the response only."""
    rows, labels = [], []
    for p in problems:
        prompt = encode_prompt(tokenizer, p.prompt)
        resp = tokenizer.encode(p.solution, add_special_tokens=False) + [tokenizer.eos_token_id]
        rows.append(prompt + resp)
        labels.append([-100] * len(prompt) + resp)
    width = max(map(len, rows))
    ids = [r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows]
    lab = [r + [-100] * (width - len(r)) for r in labels]
    return torch.tensor(ids), torch.tensor(lab)  # (N, T)


def warm_up(model, tokenizer, task, steps: int, seed: int) -> None:
    """`steps` AdamW steps of teacher forcing on reference solutions (batch 32)."""
    rng, opt = random.Random(seed + 1), torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        ids, labels = sft_batch(tokenizer, task.train_batch(32, rng))
        mask = (ids != tokenizer.pad_token_id) | (labels != -100)  # (N, T)
        loss = model(input_ids=ids, attention_mask=mask.long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            print(f"  warm-up step {step + 1}/{steps}: loss {loss.item():.3f} "
                  f"({time.perf_counter() - t0:.0f} s)")
    model.eval()


def run_once(engine, tokenizer, problems, method: dict, args, seed: int) -> dict:
    """Grow one batch of trees; return the figures of this repeat."""
    params = RolloutParams(max_new_tokens=args.max_new_tokens, **method)
    prompts = [encode_prompt(tokenizer, p.prompt) for p in problems]
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    t0 = time.perf_counter()
    trees, m = sample_trees(engine, prompts, [p.prompt for p in problems],
                            [p.columns() for p in problems], reward_fn, decode, params,
                            SamplingParams(temperature=args.temperature), random.Random(seed),
                            torch.Generator().manual_seed(seed))
    wall = time.perf_counter() - t0
    leaves = [(t, leaf) for t in trees for leaf in t.leaves()]
    return {"traj/1k tok": 1000 * m["rollout/num_trajectories"] / m["rollout/generated_tokens"],
            "traj/prompt": m["rollout/num_trajectories"] / len(trees),
            "gen tok/prompt": m["rollout/generated_tokens"] / len(trees),
            "wall s": wall, "engine tok/s": m["rollout/generated_tokens"] / m["time/generate_s"],
            "reward": sum(leaf.reward or 0.0 for _, leaf in leaves) / len(leaves),
            "steps/traj": sum(leaf.depth for _, leaf in leaves) / len(leaves)}


def report(name: str, runs: list[dict]) -> dict:
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"{name:>18}: " + "  ".join(f"{k} {v:.2f}" for k, v in med.items()))
    return med


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, tokenizer = load_model(args.model)
    task = ArithmeticTask(TaskConfig())
    print(f"model {args.model}, {torch.get_num_threads()} threads, {args.prompts} prompts, "
          f"max_new_tokens {args.max_new_tokens}, T {args.temperature}, repeats {args.repeats}")
    if args.warmup_steps:
        warm_up(model, tokenizer, task, args.warmup_steps, args.seed)
    problems = task.train_batch(args.prompts, random.Random(args.seed))
    engine = Engine(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    run_once(engine, tokenizer, problems[:2], METHODS["independent G=8"], args, 0)  # warm caches
    meds = {name: report(name, [run_once(engine, tokenizer, problems, method, args, args.seed + r)
                                for r in range(args.repeats)])
            for name, method in METHODS.items()}
    base = meds["independent G=8"]["traj/1k tok"]
    for name in list(METHODS)[1:]:
        print(f"trajectories per generated token, {name} / independent: "
              f"{meds[name]['traj/1k tok'] / base:.2f}x (target >= 1.4x)")


if __name__ == "__main__":
    main()
