"""Seconds of one training forward + backward on the same trees, per batch layout.

    .venv/bin/python benchmarks/pack_layout.py [--model DIR] [--prompts 16] [--repeats 3]
                                               [--set section.key=value ...]

Grows one batch of GRPO and one of IB-TPO trees from the configs' warm-up checkpoint, then times
the update's forward + backward (every micro-batch, gradients discarded) over the same trees laid
out as padded rows (one per trajectory) and as packed trees with several `train.pack_tokens`
limits (rows holding one tree or several), and with `train.autocast=bf16`. Medians of `--repeats`,
alternating layouts. What it measures is what `train.pack_tokens`' default is chosen by: SDPA with
a boolean mask computes every (query, key) pair of a row, so packing several trees in one row
pays attention between them.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from common import train_pass, warmup
from ibtpo.config import load_config, resolve_config_path
from ibtpo.training.trainer import Trainer, config_with

LAYOUTS = {"padded": {"pack_trees": False}, "packed 256": {"pack_tokens": 256},
           "packed 512": {"pack_tokens": 512}, "packed 1024": {"pack_tokens": 1024},
           "packed 4096": {"pack_tokens": 4096},
           "packed 512 bf16": {"pack_tokens": 512, "autocast": "bf16"}}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint (default: the testbed warm-up)")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    return p.parse_args(argv)


def forward_backward(trainer: Trainer, trees) -> tuple[float, int]:
    batch, _ = trainer.prepare_batch(trees)
    t0 = time.perf_counter()
    train_pass(trainer, batch)
    return time.perf_counter() - t0, batch.num_tokens


def main(argv=None) -> None:
    args = parse_args(argv)
    args.model = args.model or str(warmup())
    print(f"torch threads {torch.get_num_threads()}, prompts {args.prompts}, "
          f"medians of {args.repeats}")
    print(f"{'method':6s} {'layout':16s} {'fwd+bwd s':>10s} {'tokens':>7s} {'rows':>5s}")
    with tempfile.TemporaryDirectory() as out:
        for name in ("grpo", "ibtpo"):
            extra = [f"train.out_dir={out}", "train.tensorboard=false",
                     f"train.prompts_per_step={args.prompts}"]
            extra.append(f"train.init={args.model}")
            trainer = Trainer(load_config([resolve_config_path(name)], extra + args.set),
                              progress=False)
            problems = trainer.task.train_batch(args.prompts, trainer.problem_rng)
            trees, _ = trainer.policy.grow_trees(trainer.cfg, problems, trainer.rng,
                                                 trainer.generator)
            base, times = trainer.cfg, {k: [] for k in LAYOUTS}
            sizes = {}
            for _ in range(args.repeats):
                for layout, train in LAYOUTS.items():
                    trainer.cfg = config_with(base, train=train)
                    seconds, sizes[layout] = forward_backward(trainer, trees)
                    times[layout].append(seconds)
            for layout in LAYOUTS:
                trainer.cfg = config_with(base, train=LAYOUTS[layout])
                rows = len(trainer.make_batch(trees))
                print(f"{name:6s} {layout:16s} {statistics.median(times[layout]):10.3f} "
                      f"{sizes[layout]:7d} {rows:5d}")


if __name__ == "__main__":
    main()
