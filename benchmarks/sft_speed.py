"""Default supervised warm-up: held-out accuracy vs wall time, and training throughput.

    .venv/bin/python benchmarks/sft_speed.py [--set sft.steps=200 ...] [--out DIR]

Runs `ibtpo.training.sft.run_sft` with the default config (preset `nano`, the built-in arithmetic
task, stopping at the first validation whose greedy accuracy reaches `sft.stop_at_accuracy` = 0.4)
and prints: the accuracy-vs-time curve (periodic greedy pass@1 on `sft.eval_size` validation
problems), the median training tokens/s, and the final held-out evaluation per number of terms.
The acceptance target is >= 40% greedy accuracy within 5 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch
from rich.console import Console
from rich.table import Table

from ibtpo.config import load_config
from ibtpo.evaluation import format_table
from ibtpo.training.sft import run_sft


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="config override section.key=value (repeatable)")
    p.add_argument("--out", default=None, help="checkpoint directory (default: a temp dir)")
    return p.parse_args()


def curve_table(history: list[dict]) -> Table:
    """Elapsed seconds vs periodic held-out accuracy, overall and per number of terms."""
    evals = [h for h in history if "sft/val_pass@1" in h]
    terms = sorted({k.rsplit("_", 1)[1] for h in evals for k in h if "/terms_" in k}, key=int)
    table = Table(title="held-out greedy accuracy vs time (periodic evaluation)")
    for col in ["elapsed s", "step", "loss", "pass@1"] + [f"{n} terms" for n in terms]:
        table.add_column(col, justify="right")
    for h in evals:
        cells = [f"{h['time/elapsed_s']:.0f}", str(h["step"]), f"{h['sft/loss']:.3f}",
                 f"{h['sft/val_pass@1']:.2f}"]
        cells += [f"{h.get(f'sft/val_pass@1/terms_{n}', float('nan')):.2f}" for n in terms]
        table.add_row(*cells)
    return table


def main() -> None:
    args = parse_args()
    out = args.out or tempfile.mkdtemp(prefix="ibtpo-sft-bench-")
    cfg = load_config([], [f"sft.out_dir={out}", *args.overrides])
    console = Console()
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model "
                  f"{cfg.model.name_or_path}; {cfg.sft.steps} steps x {cfg.sft.batch_size} "
                  f"problems, max {cfg.sft.max_minutes} min; checkpoint -> {out}")
    start = time.perf_counter()
    final = run_sft(cfg, progress=sys.stderr.isatty())
    wall = time.perf_counter() - start
    console.print(curve_table(final["history"]))
    rates = [h["sft/tokens_per_s"] for h in final["history"] if h["sft/tokens_per_s"] > 0]
    console.print(f"training tokens/s (median over log lines): {statistics.median(rates):,.0f}")
    console.print(f"steps {final['steps']}, training {final['train_seconds']:.0f} s, "
                  f"total wall time (load + train + final eval + save) {wall:.0f} s")
    console.print(format_table(final, cfg.eval.k, f"final held-out evaluation "
                                                  f"({final['count']} problems)"))


if __name__ == "__main__":
    main()
