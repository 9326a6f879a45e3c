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

from common import RESULTS, write_section
from ibtpo.compare import band, plot_curves
from ibtpo.stats import fmt_ci, mean_ci
from methods import BUDGET, QUICK_BUDGET, run

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
                   help="seeds per config (default: 5 for GRPO and IB-TPO, 3 for the others)")
    return p.parse_args()


def at_fractions(curves: dict, budget: int, fractions=(0.1, 0.5, 1.0)) -> str:
    """Each TABLE_KEYS metric at fractions of the budget: mean ± 95% half-width over seeds."""
    import numpy as np

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


def reading(curves: dict, budget: int) -> str:
    """Generated sentences: does entropy fall, is the IB-Score / cov positive, per config."""
    import numpy as np

    ends = np.array([0.1 * budget, budget])
    lines = []
    for name, runs in curves.items():
        ent, _ = band(runs, "policy/entropy", ends)
        eff, _ = band(runs, "rollout/eff_rate", ends)
        cov = mean_ci([np.nanmean([r["tree/cov_root"] for r in rows
                                   if isinstance(r.get("tree/cov_root"), float)])
                       for rows in runs])
        lines.append(f"- {name}: policy entropy {ent[0]:.3f} → {ent[1]:.3f}, Eff-Rate "
                     f"{eff[0]:.2f} → {eff[1]:.2f} (10% → 100% of the tokens); mean cov at the "
                     f"root over training {fmt_ci(*cov, digits=4)}"
                     + (" (positive)." if cov[0] - cov[1] > 0 else
                        " (negative)." if cov[0] + cov[1] < 0 else " (interval includes 0)."))
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    names = ["grpo", "ibtpo"] if args.quick else list(CONFIGS)
    budget = args.budget or (QUICK_BUDGET if args.quick else BUDGET)
    seeds = {n: args.seeds or (2 if args.quick else 5 if n in ("grpo", "ibtpo") else 3)
             for n in names}
    _, _, curves = run(names, seeds, budget)
    RESULTS.mkdir(parents=True, exist_ok=True)
    parts = []
    for file, (title, keys) in FIGURES.items():
        plot_curves(curves, RESULTS / file, keys=keys)
        parts.append(f"**{title}**\n\n![{title}]({file})\n")
    body = (f"Configs {', '.join(names)}; seeds {seeds}; {budget:,} generated tokens per run. "
            "Curves: mean over seeds, band = 95% t-interval; step metrics smoothed over 5 steps.\n\n"
            + "\n".join(parts) + "\n" + at_fractions(curves, budget)
            + "\n### Reading (generated)\n\n" + reading(curves, budget))
    write_section("dynamics", "Study 3 — training dynamics (paper Figures 1, 3, 5)", body,
                  time.perf_counter() - start, {"budget": budget, "seeds": seeds})


if __name__ == "__main__":
    main()
