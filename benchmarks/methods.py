"""Study 2 (paper Tables 1-2): methods at equal generated tokens, several seeds each.

    .venv/bin/python benchmarks/methods.py [--quick] [--budget N] [--seeds N] [--main-seeds N]

Every method trains from the testbed's warm-up checkpoint (made when missing) until the same
number of generated tokens; runs are paired by seed (same training prompts, same evaluation).
Reports held-out pass@1 (greedy), avg@16 and the sampled pass@16 (16 samples at T = 1) as mean ±
95% t-interval over seeds, and each method's paired difference to GRPO with its interval, plus
rollout statistics. GRPO and IB-TPO also run at equal optimizer steps (equal prompts, as the
paper's epoch): every run for the median number of steps GRPO took to reach the token budget.
Methods (built-in configs): GRPO, clip-higher GRPO, entropy-bonus GRPO, entropy tree + IB-TPO
advantage (TreeRL-like), random tree + IB-TPO advantage, IB tree + GRPO advantage, IB-TPO advantage
without the IB tree, full IB-TPO. Runs live in runs/testbed/methods (finished runs are reused, also
by dynamics.py) and write committed records under benchmarks/results/runs/methods (reused on any
machine with the same code and warm-up). `--quick`: GRPO and IB-TPO only, 2 seeds, 60k tokens,
in runs/testbed/methods_60000, no records.
Writes benchmarks/results/methods.{md,json,png}.
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import RESULTS, ROOT, accepted_code, warmup, write_section
from ibtpo.compare import run_compare
from ibtpo.config import resolve_config_path
from ibtpo.stats import fmt_ci, mean_ci, paired_ci

METHODS = {  # config -> what it is
    "grpo": "GRPO (independent G = 8)",
    "grpo_clip_higher": "GRPO + clip-higher (eps_high 0.28)",
    "grpo_entropy": "GRPO + entropy bonus",
    "tree_entropy": "entropy tree + IB-TPO advantage (TreeRL-like)",
    "tree_random": "random tree + IB-TPO advantage",
    "ibtree_grpo_adv": "IB tree + GRPO advantage",
    "ibtpo_adv_indep": "IB-TPO advantage, no IB tree (independent G = 8)",
    "ibtpo": "IB-TPO (IB tree + IB-TPO advantage)",
}
MAIN = ("grpo", "ibtpo")
SEEDS, MAIN_SEEDS, QUICK_SEEDS = 4, 8, 2  # per method; GRPO and IB-TPO; each in --quick
RUNS = ROOT / "runs" / "testbed" / "methods"
BUDGET, QUICK_BUDGET = 300_000, 60_000  # GRPO still improves at 300k (Study 4's pilot)
RECORDS = RESULTS / "runs"
EVALS, QUICK_EVALS = 4, 2  # held-out evaluations per run (at equal fractions of the budget)
TARGET_POINTS = 3.0  # the bar: IB-TPO beats GRPO by >= 3 points of held-out pass@1


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="GRPO and IB-TPO, 2 seeds, small budget")
    p.add_argument("--budget", type=int, default=None, help=f"generated tokens (default {BUDGET})")
    p.add_argument("--seeds", type=int, default=SEEDS,
                   help=f"seeds of every method (default {SEEDS})")
    p.add_argument("--main-seeds", type=int, default=MAIN_SEEDS,
                   help=f"seeds of GRPO and IB-TPO ({MAIN_SEEDS})")
    p.add_argument("--methods", nargs="*", default=None, help="subset of the methods")
    return p.parse_args()


def plan(args) -> tuple[list[str], dict[str, int], int]:
    """(methods, seeds per method, budget) of this invocation."""
    if args.quick:
        return list(MAIN), dict.fromkeys(MAIN, QUICK_SEEDS), args.budget or QUICK_BUDGET
    names = args.methods or list(METHODS)
    seeds = {n: max(args.seeds, args.main_seeds) if n in MAIN else args.seeds for n in names}
    return names, seeds, args.budget or BUDGET


def overrides(model: str, budget: int, evals: int) -> list[str]:
    """The settings every run of the studies shares (`evals` evaluations, evenly spaced)."""
    return [f"train.init={model}", "train.eval_every=0", "eval.k=16",
            f"train.eval_every_tokens={budget // evals}", "train.tensorboard=false"]


def runs_dir(budget: int):
    """Where the runs of this budget live: runs of another budget (--quick) sit beside the full
    study's, so a quick pass never replaces them."""
    return RUNS if budget == BUDGET else RUNS.with_name(f"methods_{budget}")


def run(names: list[str], seeds: dict, budget: int, evals: int = EVALS, progress: bool = True,
        steps: int | None = None):
    """The comparison at `budget` generated tokens (or `steps` optimizer steps)."""
    model = str(warmup())
    kind = f"steps{steps}" if steps else "methods"
    return run_compare([resolve_config_path(n) for n in names],
                       overrides=overrides(model, budget, evals),
                       seeds=seeds,
                       out_dir=runs_dir(budget).with_name(kind) if steps else runs_dir(budget),
                       token_budget=budget, steps=steps, progress=progress,
                       baseline="grpo" if "grpo" in names else None,
                       record_dir=RECORDS / kind if budget == BUDGET else None,
                       same_code=accepted_code(),
                       title=(f"GRPO and IB-TPO at {steps} optimizer steps" if steps
                              else f"Methods at {budget:,} generated tokens"))


def paired_points(runs: list[dict], base: list[dict], key: str) -> tuple[float, float, float]:
    """Mean paired difference runs − base of `key` over the seeds both have, and its 95%
    interval (NaN with one pair), in points."""
    pairs = list(zip(runs, base))
    mean, half = paired_ci([r[key] for r, _ in pairs], [b[key] for _, b in pairs])
    return 100 * mean, 100 * (mean - half), 100 * (mean + half)


def verdict(lo: float, hi: float) -> str:
    """'better', 'worse' or 'not distinguishable' from a paired interval."""
    return "better" if lo > 0 else "worse" if hi < 0 else "not distinguishable"


def reading(results: dict) -> str:
    """Generated sentences: each method's paired difference to GRPO, and the IB-TPO target."""
    if "grpo" not in results:
        return "- (no GRPO baseline in this run)\n"
    lines = []
    for name, runs in results.items():
        if name == "grpo":
            continue
        pairs = list(zip(runs, results["grpo"]))
        mean, lo, hi = paired_points(runs, results["grpo"], "pass@1")
        state = verdict(lo, hi)
        state = ("one pair only: no interval" if lo != lo
                 else f"{state} {'from' if state == 'not distinguishable' else 'than'} GRPO")
        line = (f"- {name} ({METHODS.get(name, name)}): Δ pass@1 {mean:+.1f} pt "
                f"[95% CI {lo:+.1f}, {hi:+.1f}] over {len(pairs)} paired seeds: {state}.")
        if all(r[k] == b[k] for r, b in pairs for k in ("pass@1", "avg@k", "rollout/reward_mean")):
            line += " Identical to GRPO on every seed (same rewards, same evaluations)"
            if name == "grpo_clip_higher":
                line += (": with one on-policy update per rollout batch"
                         " (`train.num_iterations` = 1) the importance ratio is 1, so no clip"
                         " bound is ever reached and clip-higher only acts on off-policy updates")
            line += "."
        if name == "ibtpo":
            met = ("met" if lo >= TARGET_POINTS else "not met" if hi < TARGET_POINTS
                   else "not decided")
            line += f" Target ≥ +{TARGET_POINTS:.0f} pt: **{met}**."
        lines.append(line)
    return "\n".join(lines) + "\n"


def passk_table(results: dict) -> str:
    """Sampled pass@k (k = 1..16, the unbiased estimator over 16 samples per held-out problem)
    of GRPO and IB-TPO, and their paired difference, when both ran."""
    if not all(n in results for n in MAIN):
        return ""
    grpo, ibtpo = (results[n] for n in MAIN)
    lines = ["| k | GRPO pass@k | IB-TPO pass@k | Δ IB-TPO − GRPO (pt) [95% CI] |",
             "|---|---|---|---|"]
    for k in (1, 2, 4, 8, 16):
        key = f"sampled_pass@{k}"
        if not all(key in r for r in grpo + ibtpo):
            continue
        mean, lo, hi = paired_points(ibtpo, grpo, key)
        lines.append(f"| {k} | {fmt_ci(*mean_ci([r[key] for r in grpo]))} | "
                     f"{fmt_ci(*mean_ci([r[key] for r in ibtpo]))} | {mean:+.1f} "
                     f"[{lo:+.1f}, {hi:+.1f}] |")
    return ("\nSampled pass@k of the main pair (16 samples at T = 1 per held-out problem, "
            f"{len(grpo)} paired seeds):\n\n" + "\n".join(lines) + "\n")


def steps_reading(results: dict) -> str:
    """Generated sentence on the main pair at equal optimizer steps."""
    grpo, ibtpo = (results[n] for n in MAIN)
    parts = []
    for key, label in (("pass@1", "held-out pass@1"), ("sampled_pass@16", "pass@16")):
        mean, lo, hi = paired_points(ibtpo, grpo, key)
        parts.append(f"Δ {label} {mean:+.1f} pt [95% CI {lo:+.1f}, {hi:+.1f}] "
                     f"({verdict(lo, hi)})")
    tokens = (statistics.mean(r["generated_tokens"] for r in ibtpo)
              / statistics.mean(r["generated_tokens"] for r in grpo) - 1)
    return (f"\n- At equal optimizer steps, over {len(grpo)} paired seeds, IB-TPO − GRPO: "
            f"{'; '.join(parts)}; IB-TPO generated {100 * tokens:+.1f}% tokens.\n")


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    names, seeds, budget = plan(args)
    evals = QUICK_EVALS if args.quick else EVALS
    report, results, _ = run(names, seeds, budget, evals)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "methods.png").write_bytes((runs_dir(budget) / "compare.png").read_bytes())
    legend = "\n".join(f"- `{n}`: {METHODS[n]}" for n in names)
    body = (f"{legend}\n\n{report}{passk_table(results)}\n![training curves](methods.png)\n\n"
            "### Reading (generated)\n\n" + reading(results))
    if all(n in results for n in MAIN):  # the main pair at GRPO's median number of steps
        steps = round(statistics.median(r["steps"] for r in results["grpo"]))
        steps_report, steps_results, _ = run(list(MAIN), {n: seeds[n] for n in MAIN}, budget,
                                             evals, steps=steps)
        body += (f"\n### GRPO and IB-TPO at equal optimizer steps ({steps}, GRPO's median at "
                 f"{budget:,} tokens)\n\n{steps_report}{passk_table(steps_results)}"
                 f"{steps_reading(steps_results)}")
    write_section("methods", "Study 2 — methods at equal generated tokens (paper Tables 1–2)",
                  body, time.perf_counter() - start,
                  {"budget": budget, "seeds": seeds, "results": results}, runs=results)


if __name__ == "__main__":
    main()
