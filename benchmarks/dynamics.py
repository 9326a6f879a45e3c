"""Study 3 (paper Figures 1, 3 and 5): training dynamics against generated tokens.

    .venv/bin/python benchmarks/dynamics.py [--quick] [--budget N] [--seeds N]

Policy entropy, Eff-Rate, reward (Avg-Rate), held-out accuracy, and the IB-Score and cov at the
root (over each prompt's first-level samples, comparable across methods) and at every branch
point, for GRPO, clip-higher GRPO, entropy-bonus GRPO and IB-TPO: mean over seeds with a 95% band.
It uses the runs of methods.py (runs/testbed/methods; finished runs are reused, missing ones are
trained with the same settings), so the two studies describe the same runs.
Figure 1 of the paper: entropy collapses and Eff-Rate falls under GRPO; clip-higher and entropy
bonuses keep entropy up. Figures 3/5: under IB-TPO the IB-Score and cov stay positive.
Writes benchmarks/results/dynamics.{md,json} and dynamics_*.png.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from common import RESULTS, write_section
from ibtpo.compare import SMOOTH_STEPS, band, plot_curves
from ibtpo.stats import fmt_ci, mean_ci, paired_ci
from methods import (
    BUDGET,
    EVALS,
    MAIN,
    MAIN_SEEDS,
    QUICK_BUDGET,
    QUICK_EVALS,
    QUICK_SEEDS,
    SEEDS,
    run,
)

CONFIGS = ("grpo", "grpo_clip_higher", "grpo_entropy", "ibtpo")
FIGURES = {  # file -> (what it reproduces, metrics)
    "dynamics_fig1.png": ("Fig. 1: exploration under GRPO and its fixes",
                          ("policy/entropy", "rollout/eff_rate", "rollout/reward_mean",
                           "eval/pass@1", "eval/avg@k", "tree/tsallis_root")),
    "dynamics_fig3_5.png": ("Figs. 3 and 5: the IB-Score and its covariance term",
                            ("tree/ib_score_root", "tree/cov_root", "tree/ib_score",
                             "tree/cov")),
}
TABLE_KEYS = ("policy/entropy", "rollout/eff_rate", "rollout/reward_mean", "tree/ib_score_root",
              "tree/cov_root", "eval/pass@1")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="GRPO and IB-TPO, 2 seeds, small budget")
    p.add_argument("--budget", type=int, default=None, help=f"generated tokens (default {BUDGET})")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds per config (default: 8 for GRPO and IB-TPO, 4 for the others)")
    return p.parse_args()


def at_fractions(curves: dict, budget: int, fractions=(0.25, 0.5, 1.0)) -> str:
    """Each TABLE_KEYS metric at fractions of the budget: mean ± 95% half-width over seeds."""
    grid = np.array([f * budget for f in fractions])
    head = ["config", "metric"] + [f"{int(f * 100)}% of tokens" for f in fractions]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, runs in curves.items():
        for key in TABLE_KEYS:
            mean, half = band(runs, key, grid)
            if mean is None:
                continue
            cells = [fmt_ci(m, h) for m, h in zip(mean, half)]
            lines.append("| " + " | ".join([name, key] + cells) + " |")
    return "\n".join(lines) + "\n"


def first_last(runs: list[list[dict]], key: str) -> tuple[float, float]:
    """Mean over seeds of a step metric over each run's first and last SMOOTH_STEPS steps."""
    def ends(rows):
        vals = [r[key] for r in rows if isinstance(r.get(key), float)]
        return np.mean(vals[:SMOOTH_STEPS]), np.mean(vals[-SMOOTH_STEPS:])

    pairs = [ends(rows) for rows in runs]
    return float(np.mean([a for a, _ in pairs])), float(np.mean([b for _, b in pairs]))


def run_mean_ci(runs: list[list[dict]], key: str) -> tuple[float, float]:
    """Each run's mean of a step metric over training, then mean ± 95% half-width over seeds."""
    return mean_ci([np.mean([r[key] for r in rows if isinstance(r.get(key), float)])
                    for rows in runs])


def sign(ci: tuple[float, float]) -> str:
    mean, half = ci
    return ("positive" if mean - half > 0 else "negative" if mean + half < 0
            else "its interval includes 0")


def reading(curves: dict) -> str:
    """Generated sentences: does entropy fall, is the IB-Score / cov positive, per config."""
    lines = []
    for name, runs in curves.items():
        ent = first_last(runs, "policy/entropy")
        eff = first_last(runs, "rollout/eff_rate")
        ib, cov = run_mean_ci(runs, "tree/ib_score_root"), run_mean_ci(runs, "tree/cov_root")
        lines.append(f"- {name}: policy entropy {ent[0]:.3f} → {ent[1]:.3f}, Eff-Rate "
                     f"{eff[0]:.2f} → {eff[1]:.2f} (first → last {SMOOTH_STEPS} steps); over "
                     f"training, IB-Score at the root {fmt_ci(*ib)} ({sign(ib)}), cov at the "
                     f"root {fmt_ci(*cov, digits=4)} ({sign(cov)}).")
    if "grpo" in curves:
        tsallis = run_mean_ci(curves["grpo"], "tree/tsallis_root")[0]
        lines.append(
            "- Sign: with β = 5 and children carrying equal numbers of trajectories (GRPO's root) "
            "the IB-Score is tsallis/β + cov − 1/β (docs/ALGORITHM.md §2), and the policy's step "
            f"probabilities are close to 1 (GRPO's root tsallis {tsallis:.3f} over training), so "
            "the IB-Score is negative for every method; its level and the sign of cov are what "
            "compare. An IB tree's root children carry unequal numbers of trajectories (the "
            "branches below them), which moves the mean of r off 1 and accounts for part of "
            "IB-TPO's higher root IB-Score.")
    if "grpo" in curves and "ibtpo" in curves:
        for key, what in (("tree/ib_score_root", "IB-Score"), ("tree/cov_root", "cov")):
            means = {n: [float(np.mean([r[key] for r in rows if isinstance(r.get(key), float)]))
                         for rows in curves[n]] for n in ("ibtpo", "grpo")}
            d, half = paired_ci(means["ibtpo"], means["grpo"])
            state = ("higher" if d - half > 0 else "lower" if d + half < 0
                     else "not distinguishable")
            lines.append(f"- {what} at the root, IB-TPO minus GRPO over training: {d:+.4f} "
                         f"[95% CI {d - half:+.4f}, {d + half:+.4f}], paired by seed: {state}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    names = list(MAIN) if args.quick else list(CONFIGS)
    budget = args.budget or (QUICK_BUDGET if args.quick else BUDGET)
    seeds = {n: args.seeds or (QUICK_SEEDS if args.quick else MAIN_SEEDS if n in MAIN else SEEDS)
             for n in names}
    _, results, curves = run(names, seeds, budget, QUICK_EVALS if args.quick else EVALS)
    RESULTS.mkdir(parents=True, exist_ok=True)
    parts = []
    for file, (title, keys) in FIGURES.items():
        plot_curves(curves, RESULTS / file, keys=keys)
        parts.append(f"**{title}**\n\n![{title}]({file})\n")
    body = (f"Configs {', '.join(names)}; seeds {seeds}; {budget:,} generated tokens per run. "
            "Curves: mean over seeds, band = 95% t-interval; step metrics smoothed over "
            f"{SMOOTH_STEPS} steps."
            "\n\n"
            + "\n".join(parts) + "\n" + at_fractions(curves, budget)
            + "\n### Reading (generated)\n\n" + reading(curves))
    write_section("dynamics", "Study 3 — training dynamics (paper Figures 1, 3, 5)", body,
                  time.perf_counter() - start, {"budget": budget, "seeds": seeds},
                  runs=results)


if __name__ == "__main__":
    main()
