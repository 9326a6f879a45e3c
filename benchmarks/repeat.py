"""Does a seeded run repeat bit for bit on this machine? GRPO and IB-TPO, each trained twice from
the testbed warm-up with the same seed, compared by their final weights digests and metrics.

    .venv/bin/python benchmarks/repeat.py [--budget N]

Prints one line per config (digests of both runs, identical or not, how many metric values
differ) and writes benchmarks/results/repeat.json. BENCHMARKS.md's "What reproduces" cites it.
"""

from __future__ import annotations

import argparse
import json

from common import RESULTS, ROOT, machine, warmup
from ibtpo.compare import run_one
from ibtpo.config import load_config, resolve_config_path
from methods import overrides

CONFIGS = ("grpo", "ibtpo")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=int, default=60_000, help="generated tokens per run")
    args = p.parse_args()
    model = str(warmup())
    out = {"machine": machine(), "budget": args.budget, "configs": {}}
    for name in CONFIGS:
        runs = []
        for i in range(2):
            cfg = load_config([resolve_config_path(name)],
                              overrides(model, args.budget, 1) + [
                                  f"train.token_budget={args.budget}", "eval.k=4",
                                  f"train.out_dir={ROOT / 'runs' / 'repeat' / f'{name}{i}'}"])
            runs.append(run_one(cfg, progress=False, reuse=False))
        (a, rows_a), (b, rows_b) = runs
        differ = sum(ra.get(k) != rb.get(k) for ra, rb in zip(rows_a, rows_b)
                     for k in ra if not k.startswith("time/") and "per_s" not in k)
        same = a["fingerprint"]["weights"] == b["fingerprint"]["weights"]
        out["configs"][name] = {"weights": [a["fingerprint"]["weights"],
                                            b["fingerprint"]["weights"]],
                                "identical_weights": same, "differing_metric_values": differ,
                                "steps": a["steps"], "pass@1": [a["pass@1"], b["pass@1"]]}
        print(f"{name}: weights {a['fingerprint']['weights']} / {b['fingerprint']['weights']} "
              f"({'identical' if same else 'DIFFERENT'}), {differ} metric values differ "
              f"(timings excluded) over {a['steps']} steps")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "repeat.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
