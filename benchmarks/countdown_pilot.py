"""Study 5, part 2: the pilot that selects the Countdown regime, with GRPO alone.

    .venv/bin/python benchmarks/countdown_pilot.py [--seeds N] [--cells lr:N ...] [--staged]

The question of Study 5 is the paper's: where GRPO loses the exploration-exploitation balance,
does IB-TPO keep it? This pilot finds, before any IB-TPO run on the task, a regime where GRPO
demonstrably loses it. Fixed before any run (this docstring is the pilot's protocol):
- Method: GRPO (built-in config), from the Countdown warm-up (`countdown_warmup.py`).
- Grid: train.lr in LRS x train.mini_batches in MINI_BATCHES (as Study 4); everything else the
  default config.
- Horizon H = HORIZON generated tokens per run (1M, Study 4's; a 300k-token GRPO run takes
  about 1.5 minutes of training here, about 70 optimizer steps, too short to plateau),
  evaluated EVALS times evenly over H plus the warm-up's, on the first EVAL_PROBLEMS held-out
  problems: greedy pass@1 and eval.k = 64 samples at T = 1 (sampled pass@1..64, unbiased).
  Whether a cell's greedy pass@1 has plateaued by H is reported (the mean of its last two
  evaluations within PLATEAU_PT points of the one before them); it does not enter the verdict.
- Seeds: SEEDS per cell; seed 0 of every cell first (from the least pressure, the default cell,
  to the most), then seed 1. Every finished run writes its record under
  results/runs/countdown_pilot/ (committed), so a later invocation continues.
- GRPO *loses balance* in a cell when, in the mean over its seeds, (a) its final sampled
  pass@64 is at least LOSS_PT points below the warm-up's while its final greedy pass@1 is above
  the warm-up's (it learns, and narrows what it samples: the RL effect the paper targets), or
  (b) its token entropy over the last 5 steps falls below ENTROPY_FRACTION of its first 5 steps'
  while its final greedy pass@1 rises less than STALL_PT points over the warm-up's.
- The regime: among the cells that lose balance, the one with the lowest learning rate, then the
  fewest mini-batches (the least pressure that shows the effect, closest to the default). If no
  cell qualifies, the task is made harder (task.countdown_sizes=[4, 5]) and the pilot repeated;
  the report says so. Written to results/countdown_regime.json, which part 3 reads.
Writes results/countdown_pilot.{md,json} and countdown_pilot_<cell>.png.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from common import (
    COUNTDOWN,
    COUNTDOWN_WARMUP_DIR,
    RESULTS,
    ROOT,
    accepted_code,
    warmup,
    write_section,
)
from ibtpo.compare import plot_curves, run_compare
from ibtpo.config import resolve_config_path
from ibtpo.stats import fmt_ci, mean_ci
from methods import overrides

LRS = (3e-5, 1e-4, 3e-4)
MINI_BATCHES = (1, 4)
HORIZON, EVALS, EVAL_PROBLEMS = 1_000_000, 5, 500
SEEDS = 2
LOSS_PT, ENTROPY_FRACTION, STALL_PT, PLATEAU_PT = 1.0, 0.5, 2.0, 1.0
RUNS = ROOT / "runs" / "countdown" / "pilot"
RECORDS = RESULTS / "runs" / "countdown_pilot"
REGIME_FILE = RESULTS / "countdown_regime.json"
CURVES = ("eval/pass@1", "eval/sampled_pass@64", "eval/sampled_pass@16", "policy/entropy",
          "rollout/eff_rate", "rollout/reward_mean", "tree/ib_score_root", "tree/cov_root")


def cell_name(lr: float, n: int) -> str:
    """A cell's directory name: `lr0.0001_mb4` = train.lr 1e-4, train.mini_batches 4."""
    return f"lr{lr:g}_mb{n}"


def study_overrides(model: str) -> list[str]:
    """Settings every Study 5 run shares (part 3 reuses them)."""
    return COUNTDOWN + overrides(model, HORIZON, EVALS) + [
        "eval.k=64", f"eval.size={EVAL_PROBLEMS}", f"task.eval_size={EVAL_PROBLEMS}"]


def run_cell(lr: float, n: int, seeds: int, model: str) -> list[tuple[dict, list[dict]]]:
    """(summary, rows) of each GRPO seed of one cell (committed records reused)."""
    cell = cell_name(lr, n)
    _, results, curves = run_compare(
        [resolve_config_path("grpo")], seeds=seeds, token_budget=HORIZON,
        overrides=study_overrides(model) + [f"train.lr={lr}", f"train.mini_batches={n}"],
        out_dir=RUNS / cell, record_dir=RECORDS / cell, same_code=accepted_code(),
        title=f"Study 5 pilot, cell {cell}")
    return list(zip(results["grpo"], curves["grpo"]))


def entropy_ratio(rows: list[dict]) -> float:
    """Mean token entropy of the last 5 steps over that of the first 5."""
    steps = [r["policy/entropy"] for r in rows if "policy/entropy" in r]
    return float(np.mean(steps[-5:]) / np.mean(steps[:5]))


def verdict(runs: list[tuple[dict, list[dict]]]) -> dict:
    """The protocol's figures and criteria of one cell, over its seeds."""
    mean = lambda key: float(np.mean([s[key] for s, _ in runs]))  # noqa: E731
    d64 = 100 * (mean("sampled_pass@64") - mean("init_sampled_pass@64"))
    d1 = 100 * (mean("pass@1") - mean("init_pass@1"))
    ratio = float(np.mean([entropy_ratio(rows) for _, rows in runs]))
    narrows = d64 <= -LOSS_PT and d1 > 0
    stalls = ratio < ENTROPY_FRACTION and d1 < STALL_PT
    return {"seeds": len(runs), "delta_pass@64_pt": d64, "delta_pass@1_pt": d1,
            "entropy_ratio": ratio, "narrows": narrows, "entropy_stall": stalls,
            "loses_balance": narrows or stalls, "plateaued": plateaued(runs)}


def plateaued(runs: list[tuple[dict, list[dict]]]) -> bool:
    """Has the seed-mean greedy pass@1 stopped rising by H (module docstring)?"""
    curves = [[r["eval/pass@1"] for r in rows if "eval/pass@1" in r] for _, rows in runs]
    p = np.mean([c[-3:] for c in curves], axis=0)  # the last three evaluations
    return bool(100 * (p[1:].mean() - p[0]) < PLATEAU_PT)


def choose(verdicts: dict) -> str | None:
    """The regime: the cell losing balance at the lowest lr, then the fewest mini-batches."""
    for lr in LRS:
        for n in MINI_BATCHES:
            v = verdicts.get(cell_name(lr, n))
            if v and v["loses_balance"]:
                return cell_name(lr, n)
    return None


def cell_line(cell: str, runs, v: dict) -> str:
    ci = lambda key: fmt_ci(*mean_ci([s[key] for s, _ in runs]))  # noqa: E731
    return (f"| {cell} | {v['seeds']} | {ci('pass@1')} | {v['delta_pass@1_pt']:+.1f} | "
            f"{ci('sampled_pass@64')} | {v['delta_pass@64_pt']:+.1f} | {v['entropy_ratio']:.2f} "
            f"| {'yes' if v['plateaued'] else 'no'} | {loses(v)} |")


def loses(v: dict) -> str:
    """`yes (a)`, `yes (b)`, `yes (a, b)` or `no`: which of the protocol's criteria hold."""
    met = [c for c, k in (("a", "narrows"), ("b", "entropy_stall")) if v[k]]
    return f"yes ({', '.join(met)})" if met else "no"


def report(all_runs: dict, verdicts: dict, regime: str | None, seeds: int, seconds: float
           ) -> None:
    head = ["cell", "seeds", "final pass@1", "Δ pass@1 vs warm-up (pt)", "final pass@64",
            "Δ pass@64 vs warm-up (pt)", "entropy last/first 5 steps", "pass@1 plateaued",
            "loses balance"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    figures = []
    for cell, runs in all_runs.items():
        lines.append(cell_line(cell, runs, verdicts[cell]))
        png = f"countdown_pilot_{cell}.png"
        plot_curves({"grpo": [rows for _, rows in runs]}, RESULTS / png, keys=CURVES)
        figures.append(f"**{cell}**\n\n![{cell}]({png})\n")
    done = all(v["seeds"] >= SEEDS for v in verdicts.values()) and len(verdicts) == len(
        LRS) * len(MINI_BATCHES)
    losing = [c for c, v in verdicts.items() if v["loses_balance"]]
    state = (f"**Regime chosen: {regime}**, the lowest learning rate, then the fewest "
             f"mini-batches, of the {len(losing)} of {len(verdicts)} cells that lose balance "
             f"((a): learns and narrows, (b): entropy falls while pass@1 stalls); its greedy "
             f"pass@1 has {'' if verdicts[regime]['plateaued'] else 'not '}plateaued by H. A "
             "cell that collapses (pass@1 falls, entropy does not) meets neither criterion."
             if done and regime else
             "**No cell loses balance**: by the protocol the task is made harder next"
             if done else f"**Staged, not finished**: {len(verdicts)} of "
             f"{len(LRS) * len(MINI_BATCHES)} cells, at least {seeds} seed(s) each of the "
             f"protocol's {SEEDS}; the verdict is drawn only when every cell has them (per-cell "
             "criteria below are not a verdict)")
    body = (f"Protocol: the docstring of `benchmarks/countdown_pilot.py`, fixed before the runs. "
            f"Cells `lrX_mbN` are train.lr = X with train.mini_batches = N optimizer steps per "
            f"rollout batch (1 = on-policy). {HORIZON:,} generated tokens per run; "
            f"{EVAL_PROBLEMS} held-out problems, 64 samples each at T = 1. ± : 95% t-intervals "
            "over seeds.\n\n" + state + "\n\n" + "\n".join(lines) + "\n\n" + "\n".join(figures))
    runs = {c: [s for s, _ in r] for c, r in all_runs.items()}
    write_section("countdown_pilot", "Study 5, part 2 — the pilot: where does GRPO lose balance "
                  "on Countdown?", body, seconds,
                  {"verdicts": verdicts, "regime": regime, "runs": runs}, runs=runs)
    if done:
        REGIME_FILE.write_text(json.dumps({"regime": regime, "verdicts": verdicts}, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=SEEDS, help=f"seeds per cell (default {SEEDS})")
    p.add_argument("--cells", nargs="*", default=None, help="cells as lr:mini_batches")
    p.add_argument("--staged", action="store_true",
                   help="train nothing: report the committed records there are")
    args = p.parse_args()
    start = time.perf_counter()
    cells = ([(float(c.split(":")[0]), int(c.split(":")[1])) for c in args.cells]
             if args.cells else [(lr, n) for lr in LRS for n in MINI_BATCHES])
    model = str(warmup(COUNTDOWN, COUNTDOWN_WARMUP_DIR))
    all_runs = {}
    for seeds in range(1, args.seeds + 1):
        for lr, n in cells:
            if args.staged and not (RECORDS / cell_name(lr, n) / "grpo" /
                                    f"seed{seeds - 1}.json").is_file():
                continue
            all_runs[cell_name(lr, n)] = run_cell(lr, n, seeds, model)
    verdicts = {cell: verdict(runs) for cell, runs in all_runs.items()}
    seeds = min((v["seeds"] for v in verdicts.values()), default=0)
    report(all_runs, verdicts, choose(verdicts), seeds, time.perf_counter() - start)


if __name__ == "__main__":
    main()
