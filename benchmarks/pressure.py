"""Study 4: balance under pressure. Does IB-TPO keep the exploration-exploitation balance where
GRPO loses it: off-policy updates, a high learning rate, a long horizon?

    .venv/bin/python benchmarks/pressure.py --pilot      # stage 1: the horizon (once)
    .venv/bin/python benchmarks/pressure.py [--seeds N] [--cells lr:N ...]

Fixed before any run (this docstring is the study's protocol; nothing here is tuned to a result):
- Methods: GRPO and IB-TPO (built-in configs). In a cell where the pair separates (below), also
  clip-higher GRPO and entropy-bonus GRPO, 3 seeds each.
- Grid: train.lr in LRS x train.mini_batches in MINI_BATCHES (1 = on-policy; 4 = verl's default
  split of a rollout batch into 4 optimizer steps). Everything else is the default config, from
  the testbed warm-up.
- Horizon H (generated tokens per run): from the pilot, GRPO in the default cell (lr 3e-5, one
  mini-batch), PILOT_SEEDS seeds trained to PILOT_TOKENS with a greedy held-out evaluation every
  PILOT_EVERY tokens; p(m) = the seeds' mean held-out pass@1 at milestone m. H is the first
  milestone m >= 300k, with at least two after it, where the mean of p over the later milestones
  is less than 1 point above p(m) ("stopped rising"); the pilot's length when there is none.
  Written to results/pressure_horizon.json, which every later stage reads.
- Evaluations: EVALS evenly spaced over H plus the warm-up's, each on the 1,000 held-out problems:
  greedy pass@1 and eval.k = 16 samples at T = 1 (avg@16, sampled pass@1..16; methods.overrides).
- Collapse: a run collapses when its final held-out greedy pass@1 is below the warm-up's. A cell's
  collapse rate is the share of its seeds that collapse.
- The pair separates in a cell when the paired 95% interval of IB-TPO - GRPO excludes 0 for final
  pass@1 or final pass@16, or their collapse rates differ by at least 2/3. Seeds: SEEDS per method
  and cell; SEEDS_CONCLUDE for the pair in a cell that separates (a conclusion needs >= 5).
- Separation is judged once a cell has SEEDS seeds of the pair (`--seeds` below SEEDS only
  stages runs and reports them).
- Order: seed 0 of every cell, then seed 1 of every cell, ..., the cells from the most pressure
  (lr 3e-4, 4 mini-batches) to the least (the default cell); every finished run writes its
  record under results/runs/pressure/ (committed), so a later invocation, on any machine,
  continues where this one stopped (records of other code or another warm-up are rerun).
Writes results/pressure.{md,json} and results/pressure_<cell>.png.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from common import RESULTS, ROOT, accepted_code, warmup, write_section
from ibtpo.compare import plot_curves, run_compare
from ibtpo.config import resolve_config_path
from ibtpo.stats import fmt_ci, mean_ci, paired_ci
from methods import overrides

PAIR = ("grpo", "ibtpo")
EXTRA = ("grpo_clip_higher", "grpo_entropy")
LRS = (3e-5, 1e-4, 3e-4)
MINI_BATCHES = (1, 4)
SEEDS, SEEDS_CONCLUDE = 3, 5
EVALS = 4
PILOT_SEEDS, PILOT_TOKENS, PILOT_EVERY = 2, 1_200_000, 100_000
HORIZON_FILE = RESULTS / "pressure_horizon.json"
RUNS = ROOT / "runs" / "testbed" / "pressure"
RECORDS = RESULTS / "runs" / "pressure"
CURVES = ("eval/pass@1", "eval/sampled_pass@16", "policy/entropy", "rollout/eff_rate",
          "tree/ib_score_root", "tree/cov_root", "loss/clipfrac_high", "loss/ratio_std")


def cell_name(lr: float, n: int) -> str:
    return f"lr{lr:g}_mb{n}"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pilot", action="store_true", help="stage 1: find the horizon")
    p.add_argument("--seeds", type=int, default=SEEDS, help=f"seeds per cell (default {SEEDS})")
    p.add_argument("--cells", nargs="*", default=None,
                   help="subset of cells as lr:mini_batches, e.g. 3e-4:4")
    return p.parse_args()


# ----------------------------------------------------------------------------- the horizon


def horizon_rule(milestones: list[int], p: list[float]) -> int:
    """The protocol's H from milestone tokens and the seed-mean pass@1 at each."""
    for i, m in enumerate(milestones):
        later = p[i + 1:]
        if m >= 300_000 and len(later) >= 2 and np.mean(later) - p[i] < 0.01:
            return m
    return milestones[-1]


def pilot() -> dict:
    model = str(warmup())
    _, _, curves = run_compare(
        [resolve_config_path("grpo")], seeds=PILOT_SEEDS, token_budget=PILOT_TOKENS,
        overrides=overrides(model, PILOT_TOKENS, PILOT_TOKENS // PILOT_EVERY) + ["eval.k=1"],
        out_dir=RUNS / "pilot", record_dir=RECORDS / "pilot", same_code=accepted_code(),
        title=f"Study 4 pilot: GRPO to {PILOT_TOKENS:,} tokens")
    milestones = list(range(PILOT_EVERY, PILOT_TOKENS + 1, PILOT_EVERY))
    per_seed = []
    for rows in curves["grpo"]:
        evals = [(r["train/generated_tokens"], r["eval/pass@1"]) for r in rows
                 if "eval/pass@1" in r and r.get("train/step", 0) > 0]
        per_seed.append([next(v for t, v in evals if t >= m) for m in milestones])
    p = [float(x) for x in np.mean(per_seed, axis=0)]
    out = {"milestones": milestones, "pass@1": p, "per_seed": per_seed,
           "horizon": horizon_rule(milestones, p)}
    HORIZON_FILE.write_text(json.dumps(out, indent=2))
    print(f"horizon: {out['horizon']:,} tokens; seed-mean pass@1 at the milestones: "
          + ", ".join(f"{m // 1000}k {v:.3f}" for m, v in zip(milestones, p)))
    return out


# ----------------------------------------------------------------------------- the grid


def run_cell(lr: float, n: int, names, seeds: int, horizon: int, model: str):
    """(results, curves) of one cell at `seeds` seeds (committed records reused)."""
    cell = cell_name(lr, n)
    _, results, curves = run_compare(
        [resolve_config_path(m) for m in names], seeds=seeds, token_budget=horizon,
        overrides=overrides(model, horizon, EVALS) + [f"train.lr={lr}",
                                                      f"train.mini_batches={n}"],
        out_dir=RUNS / cell, record_dir=RECORDS / cell, baseline="grpo",
        same_code=accepted_code(),
        title=f"Study 4 cell {cell}")
    return results, curves


def collapse_rate(runs: list[dict]) -> float:
    return sum(r["pass@1"] < r["init_pass@1"] for r in runs) / len(runs)


def paired(results: dict, key: str) -> tuple[float, float, int]:
    a, b = results["ibtpo"], results["grpo"]
    n = min(len(a), len(b))
    mean, half = paired_ci([r[key] for r in a[:n]], [r[key] for r in b[:n]])
    return mean, half, n


def separates(results: dict) -> bool:
    """The protocol's rule (module docstring)."""
    for key in ("pass@1", "sampled_pass@16"):
        mean, half, n = paired(results, key)
        if n >= 2 and (mean - half > 0 or mean + half < 0):
            return True
    return abs(collapse_rate(results["ibtpo"]) - collapse_rate(results["grpo"])) >= 2 / 3


def run_mean(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if isinstance(r.get(key), float)]
    return float(np.mean(vals)) if vals else float("nan")


def cell_rows(cell: str, results: dict, curves: dict) -> list[str]:
    """The grid table's lines of one cell."""
    lines = []
    for name, runs in results.items():
        entropy = [run_mean(rows[-5:], "policy/entropy") for rows in curves[name]]
        cells = [cell, name, str(len(runs))]
        cells += [fmt_ci(*mean_ci([r[k] for r in runs])) for k in
                  ("pass@1", "best_pass@1", "sampled_pass@16", "best_sampled_pass@16")]
        cells += [f"{collapse_rate(runs):.2f}", fmt_ci(*mean_ci(entropy))]
        cells += [fmt_ci(*mean_ci([run_mean(rows, k) for rows in curves[name]]), digits=3)
                  for k in ("rollout/eff_rate", "tree/ib_score_root", "tree/cov_root")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def reading(all_results: dict) -> str:
    """Generated sentences: per cell, the paired differences and collapse rates."""
    lines = []
    for cell, results in all_results.items():
        parts = []
        for key, what in (("pass@1", "final pass@1"), ("sampled_pass@16", "final pass@16")):
            mean, half, n = paired(results, key)
            if n < 2:
                parts.append(f"{what}: {n} paired seed(s), no interval")
                continue
            state = ("IB-TPO higher" if mean - half > 0 else "IB-TPO lower"
                     if mean + half < 0 else "not distinguishable")
            parts.append(f"{what} Δ {100 * mean:+.1f} pt [{100 * (mean - half):+.1f}, "
                         f"{100 * (mean + half):+.1f}] over {n} seeds ({state})")
        rates = ", ".join(f"{m} {collapse_rate(r):.2f}" for m, r in results.items())
        seeds = min(len(results[m]) for m in PAIR)
        verdict = (f"separation not judged yet ({seeds} of the protocol's {SEEDS} seeds)"
                   if seeds < SEEDS else "the pair separates" if separates(results)
                   else "no separation")
        lines.append(f"- {cell}: {'; '.join(parts)}; collapse rate {rates}; {verdict}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    if args.pilot:
        pilot()
        return
    if not HORIZON_FILE.is_file():
        raise SystemExit(f"{HORIZON_FILE} is missing: run the pilot first (--pilot)")
    horizon = json.loads(HORIZON_FILE.read_text())["horizon"]
    everything = [(lr, n) for lr in reversed(LRS) for n in reversed(MINI_BATCHES)]
    cells = ([(float(c.split(":")[0]), int(c.split(":")[1])) for c in args.cells]
             if args.cells else everything)
    model = str(warmup())
    all_results, all_curves = {}, {}
    for seeds in range(1, args.seeds + 1):  # seed 0 of every cell first, then seed 1, ...
        for lr, n in cells:
            cell = cell_name(lr, n)
            all_results[cell], all_curves[cell] = run_cell(lr, n, PAIR, seeds, horizon, model)
    for lr, n in cells:  # where the pair separates (judged at SEEDS seeds): more seeds, the fixes
        cell = cell_name(lr, n)
        if args.seeds >= SEEDS and separates(all_results[cell]):
            res, cur = run_cell(lr, n, PAIR, max(args.seeds, SEEDS_CONCLUDE), horizon, model)
            extra, extra_cur = run_cell(lr, n, EXTRA, args.seeds, horizon, model)
            all_results[cell], all_curves[cell] = {**res, **extra}, {**cur, **extra_cur}
    report(all_results, all_curves, horizon, time.perf_counter() - start)


def report(all_results: dict, all_curves: dict, horizon: int, seconds: float) -> None:
    head = ["cell", "method", "seeds", "final pass@1", "best pass@1", "final pass@16",
            "best pass@16", "collapse rate", "entropy (last 5 steps)", "Eff-Rate",
            "IB root", "cov root"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    figures = []
    for cell, results in all_results.items():
        lines += cell_rows(cell, results, all_curves[cell])
        png = f"pressure_{cell}.png"
        plot_curves(all_curves[cell], RESULTS / png, keys=CURVES)
        figures.append(f"**{cell}**\n\n![{cell}]({png})\n")
    pilot = json.loads(HORIZON_FILE.read_text())
    min_seeds = min(len(runs) for res in all_results.values() for runs in res.values())
    body = (f"Protocol: the docstring of `benchmarks/pressure.py` (grid, horizon rule, collapse "
            f"rule, seeds), fixed before the runs. A cell `lrX_mbN` trains with learning rate "
            f"X (train.lr) and N optimizer steps per rollout batch (train.mini_batches; 1 = "
            f"on-policy, 4 = off-policy mini-batches). Horizon H = {horizon:,} generated tokens: "
            "GRPO's seed-mean held-out pass@1 in the default cell along the pilot ("
            + ", ".join(f"{m // 1000}k {v:.3f}" for m, v in zip(pilot["milestones"],
                                                               pilot["pass@1"]))
            + "). ± and [ ]: 95% t-intervals over seeds; Δ paired by seed.\n\n"
            + (f"**Staged, not finished:** {min_seeds} seed(s) per method and cell of the "
               f"protocol's {SEEDS}; no conclusion is drawn until every cell has them "
               "(`benchmarks/pressure.py` continues from the committed records).\n\n"
               if min_seeds < SEEDS else "")
            + "\n".join(lines) + "\n\n### Reading (generated)\n\n" + reading(all_results)
            + "\n" + "\n".join(figures))
    runs = {f"{c}/{m}": r for c, res in all_results.items() for m, r in res.items()}
    write_section("pressure", "Study 4 — balance under pressure (off-policy updates, learning "
                  "rate, horizon)", body, seconds,
                  {"horizon": horizon, "results": all_results}, runs=runs)


if __name__ == "__main__":
    main()
