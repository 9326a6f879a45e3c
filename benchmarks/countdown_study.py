"""Study 5, part 3: IB-TPO against GRPO on Countdown, in the regime where GRPO loses balance.

    .venv/bin/python benchmarks/countdown_study.py [--seeds N] [--main-seeds N] [--staged]

Fixed before any of its runs (this docstring is the protocol; written before the pilot's verdict
was known, and nothing in it is tuned to a result):
- Regime: the cell the pilot chose (results/countdown_regime.json, `countdown_pilot.py`): its
  train.lr and train.mini_batches apply to every method; everything else as the pilot (the
  Countdown warm-up, H = 1M generated tokens per run, 5 evaluations on the first 500 held-out
  problems, 64 samples each at T = 1). Without a chosen regime the script stops.
- Methods (built-in configs): GRPO and IB-TPO, MAIN_SEEDS seeds each; clip-higher GRPO (with the
  regime's mini-batches: off-policy, where clip-higher acts), entropy-bonus GRPO and the random
  tree (IB-TPO's loop and advantage with a random branch scorer), SEEDS seeds each. All at equal
  generated tokens; runs are paired by seed (same training prompts, same evaluation).
  Amended after the pilot chose an on-policy cell (train.mini_batches = 1) and before any
  clip-higher run: with one optimizer step per rollout batch the importance ratio is 1 and no
  clip acts, so clip-higher GRPO would repeat GRPO's runs. It runs with CLIP_MINI_BATCHES
  mini-batches (Study 4's off-policy level) at the regime's learning rate instead, as the issue
  asks ("clip-higher GRPO with off-policy mini-batches"); its row is marked so.
- Outcomes: final held-out greedy pass@1 and unbiased sampled pass@k for k = 1, 2, 4, ..., 64;
  over training: token entropy, Eff-Rate, the root IB-Score and cov; the paired IB-TPO - GRPO
  difference of each with its 95% t-interval. IB-TPO is said to keep the balance GRPO loses
  when the paired interval of final sampled pass@64 lies above 0; to beat GRPO when the paired
  interval of final greedy pass@1 lies above 0. Seven k are read: an interval for a single k
  that excludes 0 while the others do not is reported as weak evidence.
- Study 1's figures on this task come from the same runs' rollouts: trajectories per 1k
  generated tokens and Eff-Rate over training, per method.
- Order: GRPO and IB-TPO first, seed 0 of both, then seed 1, ... up to MAIN_SEEDS (the paired
  result the study exists for); then the other three methods the same way. Every finished run
  writes its record under results/runs/countdown/ (committed), so a later invocation continues;
  `--staged` trains nothing and reports the records there are, marked as not finished. (This
  order was set before any of the study's runs; the interleaved order first written here would
  have left the paired result to the last session.)
Writes results/countdown_study.{md,json} and countdown_study.png.
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
from countdown_pilot import HORIZON, REGIME_FILE, entropy_ratio, study_overrides
from ibtpo.compare import plot_curves, run_compare
from ibtpo.config import resolve_config_path
from ibtpo.stats import fmt_ci, mean_ci, paired_ci

METHODS = {"grpo": "GRPO", "ibtpo": "IB-TPO", "grpo_clip_higher": "GRPO + clip-higher",
           "grpo_entropy": "GRPO + entropy bonus", "tree_random": "random tree + IB-TPO advantage"}
MAIN = ("grpo", "ibtpo")
CLIP_MINI_BATCHES = 4  # clip-higher's mini-batches when the regime is on-policy (docstring)
SEEDS, MAIN_SEEDS = 4, 8
KS = (1, 2, 4, 8, 16, 32, 64)
RUNS = ROOT / "runs" / "countdown" / "study"
RECORDS = RESULTS / "runs" / "countdown"
CURVES = ("eval/pass@1", "eval/sampled_pass@64", "policy/entropy", "rollout/eff_rate",
          "tree/ib_score_root", "tree/cov_root", "rollout/trajectories_per_1k_tokens")


def regime() -> tuple[str, float, int]:
    """(cell, lr, mini_batches) the pilot chose; SystemExit when it has not chosen one."""
    if not REGIME_FILE.is_file():
        raise SystemExit(f"{REGIME_FILE} is missing: finish benchmarks/countdown_pilot.py first")
    cell = json.loads(REGIME_FILE.read_text())["regime"]
    if cell is None:
        raise SystemExit("the pilot found no cell where GRPO loses balance: make the task "
                         "harder, as its protocol says, before this study")
    lr, mb = cell.removeprefix("lr").split("_mb")
    return cell, float(lr), int(mb)


def run_mean(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return float(np.mean(vals)) if vals else float("nan")


def paired_line(results: dict, key: str, scale: float = 100.0, name: str = "",
                method: str = "ibtpo") -> str:
    a, b = results[method], results["grpo"]
    n = min(len(a), len(b))
    mean, half = paired_ci([r[key] for r in a[:n]], [r[key] for r in b[:n]])
    if half != half:  # NaN: fewer than two pairs
        return f"| {name or key} | {scale * mean:+.2f} | — | {n} | one seed: no interval |"
    state = "above 0" if mean - half > 0 else "below 0" if mean + half < 0 else "contains 0"
    return (f"| {name or key} | {scale * mean:+.2f} | [{scale * (mean - half):+.2f}, "
            f"{scale * (mean + half):+.2f}] | {n} | {state} |")


def eval_path(rows_per_seed: list[list[dict]]) -> np.ndarray:
    """Seed means at each evaluation: rows of (generated tokens, greedy pass@1, pass@64)."""
    keys = ("train/generated_tokens", "eval/pass@1", "eval/sampled_pass@64")
    runs = [[[r[k] for k in keys] for r in rows if "eval/pass@1" in r] for rows in rows_per_seed]
    n = min(len(r) for r in runs)
    return np.mean([r[:n] for r in runs], axis=0)


def frontier(curves: dict) -> str:
    """Where each method travels in (greedy pass@1, pass@64) over training, and GRPO's pass@64
    at IB-TPO's final pass@1: read beside the protocol's rule, not part of it."""
    paths = {n: eval_path(c) for n, c in curves.items()}
    head = "| method | " + " | ".join(f"{t / 1e3:.0f}k" for t in paths["grpo"][:, 0]) + " |"
    lines = ["Seed means at each evaluation, greedy pass@1 / sampled pass@64 (columns: generated "
             "tokens, GRPO's):", "", head, "|" + "---|" * (len(paths["grpo"]) + 1)]
    lines += ["| " + METHODS[n] + " | " + " | ".join(f"{p1:.3f} / {p64:.3f}" for _, p1, p64 in q)
              + " |" for n, q in paths.items()]
    g, final = paths["grpo"], paths["ibtpo"][-1]
    order = np.argsort(g[:, 1])
    if g[:, 1].min() <= final[1] <= g[:, 1].max():
        at = float(np.interp(final[1], g[order, 1], g[order, 2]))
        lines += ["", f"At IB-TPO's final greedy pass@1 ({final[1]:.3f}), GRPO's path (linear "
                  f"between its evaluations) has sampled pass@64 {at:.3f}; IB-TPO's final is "
                  f"{final[2]:.3f} ({100 * (final[2] - at):+.1f} pt). Above GRPO's path, IB-TPO "
                  "would trade accuracy for coverage better than GRPO does; on or below it, its "
                  "higher pass@64 at equal tokens is where GRPO was earlier in training."]
    return "\n".join(lines)


def verdict(results: dict) -> str:
    """The protocol's two statements, read off the paired intervals."""
    a, b = results["ibtpo"], results["grpo"]
    said = []
    for key, what, claim, denial in (
            ("sampled_pass@64", "Final sampled pass@64", "keeps the balance GRPO loses",
             "does not show that it keeps the balance GRPO loses"),
            ("pass@1", "Final greedy pass@1", "beats GRPO", "does not beat GRPO")):
        mean, half = paired_ci([r[key] for r in a], [r[key] for r in b])
        lo, hi = 100 * (mean - half), 100 * (mean + half)
        side = ("above 0: IB-TPO is ahead" if lo > 0 else "below 0: GRPO is ahead" if hi < 0
                else "contains 0: not separated")
        said.append(f"{what}: IB-TPO − GRPO {100 * mean:+.2f} pt, 95% interval "
                    f"[{lo:+.2f}, {hi:+.2f}] over {len(a)} paired seeds, {side}; so IB-TPO "
                    f"{claim if lo > 0 else denial}.")
    return "**Verdict by the protocol's rule.** " + " ".join(said)


def report(results: dict, curves: dict, cell: str, mb: int, seconds: float, finished: bool
           ) -> None:
    head = ["method", "seeds", "pass@1"] + [f"pass@{k} (T=1)" for k in KS[1:]] + [
        "entropy (last 5 steps)", "entropy last / first 5 steps", "Eff-Rate",
        "traj. per 1k tokens", "IB root", "cov root"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, runs in results.items():
        label = METHODS[name] + ("" if mini_batches(name, mb) == mb else
                                 f" ({mini_batches(name, mb)} mini-batches)")
        cells = [label, str(len(runs)), fmt_ci(*mean_ci([r["pass@1"] for r in runs]))]
        cells += [fmt_ci(*mean_ci([r[f"sampled_pass@{k}"] for r in runs])) for k in KS[1:]]
        cells += [fmt_ci(*mean_ci([run_mean(rows[-5:], "policy/entropy")
                                   for rows in curves[name]]))]
        cells += [fmt_ci(*mean_ci([entropy_ratio(rows) for rows in curves[name]]), digits=2)]
        cells += [fmt_ci(*mean_ci([run_mean(rows, k) for rows in curves[name]]), digits=3)
                  for k in ("rollout/eff_rate", "rollout/trajectories_per_1k_tokens",
                            "tree/ib_score_root", "tree/cov_root")]
        lines.append("| " + " | ".join(cells) + " |")
    paired = ["| outcome (IB-TPO − GRPO) | mean (pt) | 95% interval | seeds | interval |",
              "|---|---|---|---|---|", paired_line(results, "pass@1", name="greedy pass@1")]
    paired += [paired_line(results, f"sampled_pass@{k}", name=f"sampled pass@{k}") for k in KS]
    others = [n for n in results if n not in MAIN]
    if others:  # each baseline against GRPO, over the seeds they share
        paired += ["", "| outcome (method − GRPO) | mean (pt) | 95% interval | seeds | interval |",
                   "|---|---|---|---|---|"]
        paired += [paired_line(results, key, name=f"{METHODS[n]}: {what}", method=n)
                   for n in others for key, what in (("pass@1", "greedy pass@1"),
                                                     ("sampled_pass@64", "sampled pass@64"))]
    plot_curves(curves, RESULTS / "countdown_study.png", keys=CURVES)
    seeds = ", ".join(f"{METHODS[n]} {len(r)}" for n, r in results.items())
    pair_done = all(len(results[n]) >= MAIN_SEEDS for n in MAIN)
    state = (verdict(results) if pair_done else
             f"**Staged, not finished**: seeds so far {seeds}, of the protocol's {MAIN_SEEDS} "
             f"(GRPO, IB-TPO) and {SEEDS} (the others); the separation rule is applied only "
             "when GRPO and IB-TPO have theirs, and the intervals below are not a verdict.")
    if pair_done and not finished:
        state += (f"\n\n**Baselines staged**: seeds so far {seeds}; the others' rows will "
                  f"have {SEEDS} seeds each.")
    body = (state + "\n\nProtocol: the docstring of `benchmarks/countdown_study.py`, fixed "
            "before its runs (one amendment before the clip-higher runs, stated there). "
            f"Regime: cell {cell} of the pilot. {HORIZON:,} generated tokens per run; 500 "
            "held-out problems. ± and [ ]: 95% t-intervals over seeds; differences paired by "
            "seed, in points. Entropy is the mean token entropy over each method's own rollout "
            "tokens, and a tree's tokens are another mix (its branches continue responses from "
            "their middle, where the warm-up's per-step entropy is lower), so IB-TPO's starts "
            "lower at the same weights; its fall over training (last / first 5 steps) is the "
            "comparable figure.\n\n" + "\n".join(lines) + "\n\n" + "\n".join(paired)
            + "\n\n" + frontier(curves) + "\n\n![curves](countdown_study.png)\n")
    write_section("countdown_study", "Study 5, part 3 — IB-TPO against GRPO on Countdown", body,
                  seconds, {"regime": cell, "results": results}, runs=results)


def mini_batches(name: str, regime_mb: int) -> int:
    """The method's train.mini_batches: the regime's, but off-policy for clip-higher."""
    return CLIP_MINI_BATCHES if name == "grpo_clip_higher" and regime_mb == 1 else regime_mb


def run_plan(plan: dict, lr: float, mb: int, model: str, cell: str) -> tuple[dict, dict]:
    """Train (or reuse) the runs of `plan` ({method: seeds}); (results, curves) per method.
    One comparison per mini-batch setting, since a comparison shares its overrides."""
    results, curves = {}, {}
    for n_mb in sorted({mini_batches(n, mb) for n in plan}):
        group = {n: s for n, s in plan.items() if mini_batches(n, mb) == n_mb}
        _, res, cur = run_compare(
            [resolve_config_path(n) for n in group], seeds=group, token_budget=HORIZON,
            overrides=study_overrides(model) + [f"train.lr={lr}", f"train.mini_batches={n_mb}"],
            out_dir=RUNS if n_mb == mb else RUNS / f"mb{n_mb}", record_dir=RECORDS,
            baseline="grpo" if "grpo" in group else None, same_code=accepted_code(),
            title=f"Study 5: methods on Countdown, cell {cell}"
            + ("" if n_mb == mb else f" with {n_mb} mini-batches"))
        results.update(res)
        curves.update(cur)
    return {n: results[n] for n in plan}, {n: curves[n] for n in plan}


def committed_seeds(name: str) -> int:
    """How many consecutive seeds (0, 1, ...) of `name` have a committed record."""
    n = 0
    while (RECORDS / name / f"seed{n}.json").is_file():
        n += 1
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=SEEDS, help=f"seeds per method ({SEEDS})")
    p.add_argument("--main-seeds", type=int, default=MAIN_SEEDS,
                   help=f"seeds of GRPO and IB-TPO ({MAIN_SEEDS})")
    p.add_argument("--staged", action="store_true",
                   help="train nothing: report the committed records there are")
    args = p.parse_args()
    start = time.perf_counter()
    cell, lr, mb = regime()
    model = str(warmup(COUNTDOWN, COUNTDOWN_WARMUP_DIR))
    want = {n: args.main_seeds if n in MAIN else args.seeds for n in METHODS}
    if args.staged:
        want = {n: min(s, committed_seeds(n)) for n, s in want.items()}
        if min(want[n] for n in MAIN) < 1:
            raise SystemExit("no committed GRPO and IB-TPO records to report yet")
    others = [n for n in METHODS if n not in MAIN]
    plans = [{n: min(want[n], k) for n in MAIN} for k in range(1, max(want[n] for n in MAIN) + 1)]
    plans += [{**{n: want[n] for n in MAIN}, **{n: min(want[n], k) for n in others}}
              for k in range(1, max(want[n] for n in others) + 1)]
    for plan in plans[-1:] if args.staged else plans:  # seed by seed, main methods first
        results, curves = run_plan({n: s for n, s in plan.items() if s > 0}, lr, mb, model, cell)
    finished = all(len(results.get(n, [])) >= (MAIN_SEEDS if n in MAIN else SEEDS)
                   for n in METHODS)
    report(results, curves, cell, mb, time.perf_counter() - start, finished)


if __name__ == "__main__":
    main()
