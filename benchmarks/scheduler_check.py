"""Does the continuous scheduler learn what the synchronous one learns? (issue 16)

    .venv/bin/python benchmarks/scheduler_check.py [--seeds 3]

IB-TPO with `rollout.scheduler=continuous` and branch-prefix KV reuse (`rollout.prefix_cache_mb`)
trained exactly as Study 2's main pair (benchmarks/methods.py: the testbed warm-up, 300k
generated tokens, the same evaluations), seeds 0..N-1, paired by seed with Study 2's IB-TPO
(synchronous) runs of the same seeds, which are reused from their committed records. Reports
held-out pass@1 (greedy), avg@16 and pass@16 per scheduler (mean ± 95% t-interval) and the
paired difference continuous − sync with its interval. Both grow the same trees up to ties broken
by last bits (docs/PERFORMANCE.md), so their runs may part after the first such tie; the question
is whether the learning figures move beyond Study 2's intervals. The synchronous runs are never
trained here: when Study 2 has no current record of a seed, it says so and stops. Runs:
runs/testbed/scheduler_check; committed records under benchmarks/results/runs/continuous (reused
like every study's). Writes benchmarks/results/scheduler_check.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import time

import yaml

from common import ROOT, accepted_code, warmup, write_section
from ibtpo.compare import run_compare
from ibtpo.config import load_config, resolve_config_path
from ibtpo.stats import fmt_ci, mean_ci, paired_ci
from methods import BUDGET, EVALS, RECORDS, overrides

CONTINUOUS = ["rollout.scheduler=continuous", "rollout.prefix_cache_mb=1024"]
RUNS = ROOT / "runs" / "testbed" / "scheduler_check"
NAME = "ibtpo_continuous"
METRICS = (("pass@1", "held-out pass@1 (greedy)"), ("avg@k", "avg@16"),
           ("sampled_pass@16", "pass@16"))


def continuous_config() -> str:
    """The built-in `ibtpo` config with the continuous scheduler, as a file named NAME."""
    RUNS.mkdir(parents=True, exist_ok=True)
    path = RUNS / f"{NAME}.yaml"
    cfg = load_config([resolve_config_path("ibtpo")], CONTINUOUS).to_dict()
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


def study2_runs(seeds: int) -> list[dict]:
    """Study 2's IB-TPO runs of seeds 0..seeds-1, from their committed records only."""
    for seed in range(seeds):
        path = RECORDS / "methods" / "ibtpo" / f"seed{seed}.json"
        version = json.loads(path.read_text())["code_version"] if path.is_file() else None
        if version not in accepted_code():
            raise SystemExit(f"{path}: {'missing' if version is None else 'stale'}; run "
                             "benchmarks/methods.py first (or benchmarks/equivalence.py if the "
                             "code changed without changing what it computes)")
    model = str(warmup())
    _, res, _ = run_compare([resolve_config_path("ibtpo")],
                            overrides=overrides(model, BUDGET, EVALS), seeds=seeds,
                            out_dir=RUNS / "sync", token_budget=BUDGET,
                            record_dir=RECORDS / "methods", same_code=accepted_code(),
                            title="IB-TPO, synchronous scheduler (Study 2's runs)")
    return res["ibtpo"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3, help="seeds (default 3)")
    args = p.parse_args()
    start = time.perf_counter()
    b = study2_runs(args.seeds)
    _, cont, _ = run_compare([continuous_config()],
                             overrides=overrides(str(warmup()), BUDGET, EVALS),
                             seeds=args.seeds, out_dir=RUNS, token_budget=BUDGET,
                             record_dir=RECORDS / "continuous", same_code=accepted_code(),
                             title="IB-TPO, continuous scheduler with prefix KV reuse")
    a = cont[NAME]
    lines = ["| metric | sync | continuous + KV reuse | Δ continuous − sync |", "|---|---|---|---|"]
    for key, label in METRICS:
        if all(key in r for r in a + b):
            lines.append(f"| {label} | {fmt_ci(*mean_ci([r[key] for r in b]))} | "
                         f"{fmt_ci(*mean_ci([r[key] for r in a]))} | "
                         f"{fmt_ci(*paired_ci([r[key] for r in a], [r[key] for r in b]))} |")
    if all("steps" in r for r in a + b):
        lines.append(f"| optimizer steps | {fmt_ci(*mean_ci([r['steps'] for r in b]), digits=1)}"
                     f" | {fmt_ci(*mean_ci([r['steps'] for r in a]), digits=1)} | |")
    body = (f"IB-TPO at {BUDGET:,} generated tokens, seeds 0–{args.seeds - 1}, paired by seed; "
            f"sync = Study 2's runs (reused), continuous = `{' '.join(CONTINUOUS)}`.\n\n"
            + "\n".join(lines) + "\n")
    write_section("scheduler_check", "Continuous vs synchronous scheduler: what IB-TPO learns",
                  body, time.perf_counter() - start,
                  {"seeds": args.seeds, "sync": b, "continuous": a}, runs={"continuous": a})
    print(body)


if __name__ == "__main__":
    main()
