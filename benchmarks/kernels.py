"""What the portable kernels cost: warm-up training throughput on `native` and `portable` kernels.

    .venv/bin/python benchmarks/kernels.py [--steps 150]

Runs the default warm-up (`benchmarks/sft_speed.py`, no early stop, no validation) for `--steps`
steps once per `model.kernels` mode, each in a fresh process (the kernels are chosen when torch
first computes), and prints each mode's median training tokens/s and their ratio. Time it only
on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from ibtpo.kernels import PORTABLE_ENV

HERE = Path(__file__).resolve().parent
RATE = re.compile(r"training tokens/s \(median over log lines\): ([\d,]+)")


def tokens_per_s(mode: str, steps: int) -> float:
    """Median training tokens/s of a `steps`-step warm-up on `mode` kernels, in a fresh process
    whose environment holds none of the kernel variables."""
    env = {k: v for k, v in os.environ.items() if k not in PORTABLE_ENV}
    cmd = [sys.executable, str(HERE / "sft_speed.py"), "--set", f"model.kernels={mode}",
           "--set", f"sft.steps={steps}", "--set", "sft.stop_at_accuracy=0",
           "--set", "sft.eval_every=0", "--set", "eval.size=50"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return float(RATE.search(out).group(1).replace(",", ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=150, help="warm-up steps per mode")
    args = p.parse_args()
    rates = {mode: tokens_per_s(mode, args.steps) for mode in ("native", "portable")}
    for mode, rate in rates.items():
        print(f"{mode:9s} {rate:10,.0f} training tokens/s (median, {args.steps} steps)")
    print(f"portable / native: {rates['portable'] / rates['native']:.3f}")


if __name__ == "__main__":
    main()
