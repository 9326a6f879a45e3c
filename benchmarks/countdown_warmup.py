"""Study 5, part 1: the Countdown warm-up, and what it leaves to explore.

    .venv/bin/python benchmarks/countdown_warmup.py [--problems N]

The warm-up is `ibtpo sft` on the built-in Countdown task (`task.name=countdown`, defaults
otherwise: 3 or 4 numbers in 1..10, targets 10..60, at least 2 solution paths per problem), its
targets drawn uniformly among each problem's solution paths, stopped at the first validation
whose greedy accuracy reaches 0.2 (`common.COUNTDOWN`; the arithmetic warm-up's rule at a lower
mark, so that RL starts where much is left to find). On N held-out problems (default 500) it
measures, from one greedy response and K = 64 samples at T = 1 per problem:
- greedy pass@1 and the unbiased sampled pass@k for k = 1..64;
- per-step entropy: the mean token entropy (sampling policy, T = 1) of the 1st, 2nd, ... step of
  the sampled responses, and over all tokens;
- distinct correct first steps: per problem, how many different first steps (operands in either
  order count as one) begin the correct samples; and the share of samples whose first step is a
  dead end (no solution path continues it), against the problems' own dead-end rate.
Writes results/countdown_warmup.{md,json} and countdown_warmup.png (pass@k).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from common import COUNTDOWN, COUNTDOWN_WARMUP_DIR, RESULTS, warmup, write_section
from ibtpo.config import load_config
from ibtpo.core.tree import split_steps
from ibtpo.data import load_task
from ibtpo.data.countdown import STEP_RE, apply, count_paths
from ibtpo.data.rewards import task_reward_fn
from ibtpo.evaluation import decode_completion, generate_and_score, pass_at_k
from ibtpo.models import encode_prompt, load_model, read_extra, stop_token_ids
from ibtpo.rollout.engine import Engine, SamplingParams

K = 64
KS = (1, 2, 4, 8, 16, 32, 64)
MAX_STEPS = 5  # entropy per step position, steps 1..5 (the answer line is the last step)


def first_step(text: str) -> tuple | None:
    """The first step of a response as an order-free key (a op b, operands sorted for + and *),
    or None when its first line is not a step."""
    match = STEP_RE.match(text.split("\n", 1)[0])
    if not match:
        return None
    a, op, b = int(match[1]), match[2], int(match[3])
    return (max(a, b), op, min(a, b)) if op in "+*" else (a, op, b)


def leads_on(key: tuple, numbers: list[int], target: int) -> bool:
    """Does a solution path continue the first step `key` (valid, operands given)?"""
    a, op, b = key
    c = apply(a, op, b)
    rest = list(numbers)
    for v in (a, b):
        if v not in rest:
            return False
        rest.remove(v)
    if c is None:
        return False
    return c == target or count_paths((tuple(sorted(rest)), (c,)), target) > 0


def step_entropies(samples, tokenizer) -> list[list[float]]:
    """Per step position (1..MAX_STEPS), the mean token entropy of each sample's step there."""
    out = [[] for _ in range(MAX_STEPS)]
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    for s in samples:
        for i, (a, b) in enumerate(split_steps(s.token_ids, decode)[:MAX_STEPS]):
            out[i].append(float(np.mean(s.entropies[a:b])))
    return out


def profile(model_dir: str, n: int) -> dict:
    """Every figure of the module docstring for the model at `model_dir`."""
    cfg = load_config(overrides=COUNTDOWN + [f"task.eval_size={n}"])
    problems = load_task(cfg.task).eval_set()
    model, tokenizer = load_model(model_dir)
    engine = Engine(model.eval(), stop_token_ids(tokenizer, model), tokenizer.pad_token_id,
                    batch_size=256)
    ids = [encode_prompt(tokenizer, p.prompt) for p in problems]
    reward_fn, max_new = task_reward_fn(cfg.task), cfg.sampling.max_new_tokens
    greedy, _ = generate_and_score(engine, tokenizer, problems, ids, reward_fn, 1, max_new,
                                   SamplingParams(temperature=0.0))
    rewards, samples = generate_and_score(engine, tokenizer, problems, ids, reward_fn, K, max_new,
                                          SamplingParams(temperature=1.0), seed=0)
    texts = [decode_completion(tokenizer, s.token_ids) for s in samples]
    solved = [sum(r == 1 for r in rewards[i * K:(i + 1) * K]) for i in range(len(problems))]
    distinct, dead = [], []
    for i, p in enumerate(problems):
        keys = [first_step(t) for t in texts[i * K:(i + 1) * K]]
        distinct.append(len({k for k, r in zip(keys, rewards[i * K:]) if r == 1}))
        dead += [k is None or not leads_on(k, p.meta["numbers"], int(p.answer)) for k in keys]
    per_step = step_entropies(samples, tokenizer)
    return {
        "problems": n, "k": K, "greedy_pass@1": float(np.mean([r or 0 for r in greedy])),
        "pass@k": {k: float(np.mean([pass_at_k(K, c, k) for c in solved]))
                   for k in range(1, K + 1)},
        "entropy_per_step": [float(np.mean(e)) if e else None for e in per_step],
        "entropy_all": float(np.mean([h for s in samples for h in s.entropies])),
        "distinct_correct_first_steps_mean": float(np.mean(distinct)),
        "distinct_correct_first_steps_hist": np.bincount(distinct).tolist(),
        "dead_first_step_share": float(np.mean(dead)),
        "problem_dead_end_rate": float(np.mean([p.meta["dead_end_rate"] for p in problems])),
        "solutions_median": float(np.median([p.meta["solutions"] for p in problems])),
        "mean_tokens": float(np.mean([len(s.token_ids) for s in samples]))}


def plot(figures: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ks = sorted(figures["pass@k"], key=int)
    ax.plot([int(k) for k in ks], [figures["pass@k"][k] for k in ks], marker=".")
    ax.set(xscale="log", xlabel="k (samples at T = 1)", ylabel="held-out pass@k", ylim=(0, 1),
           title="Countdown warm-up: sampled pass@k")
    ax.set_xticks(KS, [str(k) for k in KS])
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(f: dict, extra: dict, seconds: float) -> None:
    final = extra.get("final_eval") or {}
    fp = final.get("fingerprint", {})
    steps = ", ".join(f"step {i + 1} {h:.3f}" for i, h in enumerate(f["entropy_per_step"])
                      if h is not None)
    body = (f"Warm-up: `ibtpo sft --set task.name=countdown --set sft.stop_at_accuracy=0.2` "
            f"(nano), stopped at step {final.get('steps')} (held-out greedy pass@1 "
            f"{final.get('pass@1', 0):.3f} on {final.get('count')} problems); weights fingerprint "
            f"`{fp.get('weights', '?')}`. Figures on {f['problems']} held-out problems "
            f"(median {f['solutions_median']:g} solution paths each; on average "
            f"{f['problem_dead_end_rate']:.0%} of a problem's first steps are dead ends), one "
            f"greedy response and {f['k']} samples at T = 1 each.\n\n"
            "| k | " + " | ".join(str(k) for k in KS) + " |\n|---|" + "---|" * len(KS) + "\n"
            "| sampled pass@k | " + " | ".join(f"{f['pass@k'][k]:.3f}" for k in KS) + " |\n\n"
            f"- greedy pass@1: **{f['greedy_pass@1']:.3f}**; sampled pass@64: "
            f"**{f['pass@k'][64]:.3f}**.\n"
            f"- token entropy at T = 1: {f['entropy_all']:.3f} nats over all tokens; per step: "
            f"{steps}.\n"
            f"- distinct correct first steps per problem (among its 64 samples): mean "
            f"{f['distinct_correct_first_steps_mean']:.2f}; problems with 0, 1, 2, ... of them: "
            f"{f['distinct_correct_first_steps_hist']}.\n"
            f"- {f['dead_first_step_share']:.0%} of the samples begin with a dead-end or invalid "
            "first step.\n\n![pass@k](countdown_warmup.png)\n")
    plot(f, RESULTS / "countdown_warmup.png")
    write_section("countdown_warmup", "Study 5, part 1 — the Countdown warm-up: what is left to "
                  "explore", body, seconds,
                  {**f, "fingerprint": fp, "sft_steps": final.get("steps")})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problems", type=int, default=500, help="held-out problems (default 500)")
    args = p.parse_args()
    start = time.perf_counter()
    path = warmup(COUNTDOWN, COUNTDOWN_WARMUP_DIR)
    figures = profile(str(path), args.problems)
    report(figures, read_extra(path), time.perf_counter() - start)


if __name__ == "__main__":
    main()
