"""Study 1 (paper Table 3): branching strategies on one warm-up checkpoint, no training.

    .venv/bin/python benchmarks/branching.py [--quick] [--prompts N] [--model DIR] [--task T]

Grows one tree per prompt, for the same held-out prompts, with each strategy (independent G = 8
and G = 12; random, width, entropy and IB trees (B0, L, K, Bn) = (4, 9, 1, 1), G = 12; the IB tree
with and without root branches), 16 prompts per batch as in training, and reports per strategy:
Eff-Rate, Avg-Rate, generated tokens per prompt, trajectories per 1k generated tokens and its ratio
to independent G = 8, the share of branches taken at the root, the mean branch depth (steps) and
shared prefix (tokens), the cost of a branch relative to a full response, and the root's IB-Score
and cov. Every figure has a 95% bootstrap interval over prompts (paired across strategies: the
same prompts are resampled together). The warm-up checkpoint is the testbed's (made when missing).
`--task countdown`: the same on the Countdown testbed (Study 5) from its warm-up, written to
results/branching_countdown.{md,json,png}.

The paper (Table 3, Qwen3-8B): 12 IB-tree trajectories for 7,592 tokens against 8 independent
ones for 7,469, i.e. 1.52x the trajectories per token, with a branch costing 0.52 of a response.
Writes benchmarks/results/branching.{md,json,png}.
"""

from __future__ import annotations

import argparse
import time

from common import COUNTDOWN, COUNTDOWN_WARMUP_DIR, RESULTS, warmup, write_section
from ibtpo.config import load_config
from ibtpo.core.ib_score import node_ib_scores
from ibtpo.core.tree import leaf_reward
from ibtpo.rollout.policy import Policy
from ibtpo.seeding import SAMPLING, stream_key
from ibtpo.stats import bootstrap_ci

TREE = {"b0": 4, "rounds": 9, "k": 1, "bn": 1}
STRATEGIES = {
    "independent G=8": {"scorer": "independent", "b0": 8, "rounds": 1},
    "independent G=12": {"scorer": "independent", "b0": 12, "rounds": 1},
    "random tree": {"scorer": "random", **TREE},
    "width tree": {"scorer": "width", **TREE},
    "entropy tree": {"scorer": "entropy", **TREE},
    "IB tree, root allowed": {"scorer": "ib", "branch_from_root": True, **TREE},
    "IB tree, no root": {"scorer": "ib", "branch_from_root": False, **TREE},
}
BASE = "independent G=8"
PAPER_BRANCH_COST = (7592 - 4 * 7469 / 8) / 8 / (7469 / 8)  # 0.516 of a full response


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="128 prompts instead of 512")
    p.add_argument("--prompts", type=int, default=None, help="held-out prompts (default 512)")
    p.add_argument("--model", default=None, help="checkpoint (default: the testbed warm-up)")
    p.add_argument("--seed", type=int, default=0, help="sampling and tie-breaking seed")
    p.add_argument("--task", choices=("arithmetic", "countdown"), default="arithmetic",
                   help="testbed (default arithmetic; countdown: Study 5's)")
    return p.parse_args()


def tree_record(tree, beta: float) -> dict:
    """The per-prompt numbers every statistic below is computed from."""
    leaves = tree.leaves()
    b0 = len(leaves) - len(tree.branch_points)
    first = [len(tree.response_ids(leaf)) for leaf in leaves[:b0]]  # the initial responses
    scores = node_ib_scores(tree, beta)
    root = scores.get(tree.root, {}) if len(tree.root.children) >= 2 else {}
    return {"G": len(leaves), "tokens": tree.num_generated_tokens(),
            "rewards": [leaf_reward(leaf) for leaf in leaves], "initial_tokens": sum(first),
            "b0": b0, "branches": len(tree.branch_points),
            "at_root": sum(n is tree.root for n in tree.branch_points),
            "depth": sum(n.depth for n in tree.branch_points),
            "prefix": sum(len(tree.response_ids(n)) for n in tree.branch_points),
            "ib_root": root.get("ib"), "cov_root": root.get("cov")}


def grow(model: str, strategy: dict, prompts: int, seed: int, task: list[str] = ()
         ) -> list[dict]:
    """Per-prompt records of one strategy on the first `prompts` held-out problems."""
    sets = [f"rollout.{k}={str(v).lower() if isinstance(v, bool) else v}"
            for k, v in strategy.items()]
    cfg = load_config(overrides=[*task, f"train.init={model}", *sets])
    policy = Policy(cfg, model)
    from ibtpo.data import load_task

    problems = load_task(cfg.task).eval_set()[:prompts]
    records, chunk = [], cfg.train.prompts_per_step
    for i in range(0, len(problems), chunk):
        keys = [stream_key(seed, SAMPLING, "score", j)
                for j in range(i, min(i + chunk, len(problems)))]
        trees, _ = policy.grow_trees(cfg, problems[i:i + chunk], keys)
        records += [tree_record(t, cfg.advantage.beta) for t in trees]
    return records


def ratio(recs, num: str, den: str, scale: float = 1.0) -> float:
    d = sum(r[den] for r in recs)
    return scale * sum(r[num] for r in recs) / d if d else float("nan")


def mean_of(recs, key: str) -> float:
    vals = [r[key] for r in recs if r[key] is not None]
    return sum(vals) / len(vals) if vals else float("nan")


STATISTICS = {  # name -> statistic of a list of per-prompt records
    "Eff-Rate": lambda rs: sum(max(r["rewards"]) != min(r["rewards"]) for r in rs) / len(rs),
    "Avg-Rate": lambda rs: sum(sum(r["rewards"]) for r in rs) / sum(r["G"] for r in rs),
    "G": lambda rs: sum(r["G"] for r in rs) / len(rs),
    "tokens/prompt": lambda rs: sum(r["tokens"] for r in rs) / len(rs),
    "traj/1k tok": lambda rs: ratio(rs, "G", "tokens", 1000.0),
    "root share": lambda rs: ratio(rs, "at_root", "branches"),
    "branch depth": lambda rs: ratio(rs, "depth", "branches"),
    "shared prefix tok": lambda rs: ratio(rs, "prefix", "branches"),
    "branch cost": lambda rs: (ratio(rs, "tokens", "branches") - ratio(rs, "initial_tokens",
                               "branches")) / ratio(rs, "initial_tokens", "b0"),
    "IB root": lambda rs: mean_of(rs, "ib_root"),
    "cov root": lambda rs: mean_of(rs, "cov_root"),
}


def paired_units(records: dict[str, list[dict]]) -> list[dict[str, dict]]:
    """One unit per prompt: {strategy: record}, so a bootstrap resamples prompts jointly."""
    n = len(next(iter(records.values())))
    return [{name: recs[i] for name, recs in records.items()} for i in range(n)]


def summarise(records: dict[str, list[dict]]) -> dict:
    """{strategy: {statistic: (value, lo, hi)}} plus the paired ratios and differences to BASE."""
    units = paired_units(records)
    out = {}
    for name in records:
        out[name] = {k: bootstrap_ci(units, lambda us, f=f, n=name: f([u[n] for u in us]))
                     for k, f in STATISTICS.items()}
        out[name]["traj/1k vs G=8"] = bootstrap_ci(units, lambda us, n=name: (
            STATISTICS["traj/1k tok"]([u[n] for u in us])
            / STATISTICS["traj/1k tok"]([u[BASE] for u in us])))
        out[name]["Eff-Rate - G=8"] = bootstrap_ci(units, lambda us, n=name: (
            STATISTICS["Eff-Rate"]([u[n] for u in us]) - STATISTICS["Eff-Rate"]([u[BASE]
                                                                                for u in us])))
    return out


def fmt(v: tuple, digits: int = 3) -> str:
    value, lo, hi = v
    if value != value:  # NaN
        return "—"
    return f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


COLUMNS = [("Eff-Rate", 2), ("Eff-Rate - G=8", 2), ("Avg-Rate", 3), ("G", 1),
           ("tokens/prompt", 0), ("traj/1k tok", 1), ("traj/1k vs G=8", 2), ("root share", 2),
           ("branch depth", 2), ("shared prefix tok", 1), ("branch cost", 2), ("IB root", 3),
           ("cov root", 4)]


def table(summary: dict) -> str:
    head = ["strategy"] + [c for c, _ in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, stats in summary.items():
        lines.append("| " + " | ".join([name] + [fmt(stats[c], d) for c, d in COLUMNS]) + " |")
    return "\n".join(lines) + "\n"


def verdict(v: tuple, target: float, what: str, unit: str = "") -> str:
    value, lo, hi = v
    state = ("met" if lo >= target else "not met" if hi < target else
             "not decided (the interval straddles it)")
    return (f"{what}: {value:.2f}{unit} [95% CI {lo:.2f}, {hi:.2f}]; "
            f"target ≥ {target}{unit}: {state}.")


def sign_reading(v: tuple, what: str) -> str:
    value, lo, hi = v
    if lo > 0:
        return f"{what} is higher ({value:+.3f}, CI {lo:+.3f} to {hi:+.3f})."
    if hi < 0:
        return f"{what} is lower ({value:+.3f}, CI {lo:+.3f} to {hi:+.3f})."
    return f"{what} is not distinguishable ({value:+.3f}, CI {lo:+.3f} to {hi:+.3f})."


def reading(summary: dict) -> str:
    """Sentences generated from the numbers: the targets, and which root setting fits the paper."""
    lines = []
    for name in ("IB tree, root allowed", "IB tree, no root"):
        s = summary[name]
        lines.append("- " + verdict(s["traj/1k vs G=8"], 1.5,
                                    f"{name}: trajectories per generated token vs independent "
                                    "G=8", "×"))
        lines.append("- " + sign_reading(s["Eff-Rate - G=8"],
                                         f"{name}: Eff-Rate minus independent G=8's"))
        lines.append(f"- {name}: a branch costs {fmt(s['branch cost'], 2)} of a full response "
                     f"(paper: {PAPER_BRANCH_COST:.2f}); {fmt(s['root share'], 2)} of branches "
                     "start at the root.")
    gap = {n: abs(summary[n]["branch cost"][0] - PAPER_BRANCH_COST)
           for n in ("IB tree, root allowed", "IB tree, no root")}
    best = min(gap, key=gap.get)
    lines.append(f"- Closest to the paper's branch cost: **{best}** (|difference| "
                 f"{gap[best]:.2f} against {max(gap.values()):.2f}).")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, key in zip(axes, ("traj/1k tok", "Eff-Rate", "Avg-Rate")):
        vals = [summary[n][key] for n in names]
        ax.bar(range(len(names)), [v[0] for v in vals], color=[f"C{i}" for i in range(len(names))],
               yerr=[[v[0] - v[1] for v in vals], [v[2] - v[0] for v in vals]], capsize=4)
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{key} (95% bootstrap CI)")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    prompts = args.prompts or (128 if args.quick else 512)
    countdown = args.task == "countdown"
    task = COUNTDOWN if countdown else []
    model = args.model or str(warmup(COUNTDOWN, COUNTDOWN_WARMUP_DIR) if countdown else warmup())
    name_of = "branching_countdown" if countdown else "branching"
    records = {}
    for name, strategy in STRATEGIES.items():
        t0 = time.perf_counter()
        records[name] = grow(model, strategy, prompts, args.seed, task)
        print(f"{name:24s} {time.perf_counter() - t0:6.0f} s")
    summary = summarise(records)
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(summary, RESULTS / f"{name_of}.png")
    body = (("Countdown testbed (Study 5). " if countdown else "")
            + f"{prompts} held-out prompts, one tree each per strategy (the same prompts for every "
            f"strategy), warm-up checkpoint `{model}`, sampling seed {args.seed}. Cells: value "
            "[95% bootstrap interval over prompts, paired across strategies]. `branch cost`: "
            "generated tokens of a branch / tokens of an initial full response.\n\n"
            + table(summary) + f"\n![branching]({name_of}.png)\n\n### Reading (generated)\n\n"
            + reading(summary))
    print(body)
    title = "Study 1 — branching strategies (paper Table 3), no training"
    write_section(name_of, title + (", on Countdown" if countdown else ""), body,
                  time.perf_counter() - start, {"prompts": prompts, "model": model,
                                                "summary": summary, "records": records})


if __name__ == "__main__":
    main()
