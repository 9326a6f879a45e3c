"""Hardware efficiency: this machine's matmul peak, and the FLOP/s of training and generation.

    .venv/bin/python benchmarks/hw_efficiency.py [--config ibtpo] [--model DIR] [--steps 3]
                                                 [--quick] [--set section.key=value ...]

1. Matmul throughput in fp32 (and in bf16 when training runs in bf16) with torch's current thread
   count: the best of a square 2048^3 product and the `tiny` preset's shapes (4096 x 256 x 768 and
   4096 x 768 x 256); the best is "the measured peak" of that precision. (On the portable AVX2
   kernels, `model.kernels=portable`, the default, bf16 matmuls have no hardware path: a few
   GFLOP/s.)
2. One trainer from the config (default: `ibtpo`, packed trees, the testbed's warm-up; `--set
   train.autocast=bf16` measures bf16). After one untimed step, for each of `--steps` steps:
   - generation: the step's trees are grown once timed, then again under
     `torch.utils.flop_counter.FlopCounterMode` (trees are keyed by the step: same samples, so
     the same FLOPs);
   - training: the batch layout with its reference forward and the update (forward + backward of
     every micro-batch, clip, AdamW) are timed; their FLOPs are counted on one more layout and
     forward + backward of the same trees (gradients discarded).
   FLOPs are those executed (attention over masked positions included, the counter's own rules).
Printed: GFLOP/s of training and generation and their share of the matching peak (the target of
issue 10: training >= 50% of the peak of the precision used).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import train_pass, warmup
from ibtpo.config import load_config, resolve_config_path
from ibtpo.training.trainer import Trainer

SHAPES = ((2048, 2048, 2048), (4096, 256, 768), (4096, 768, 256))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="ibtpo")
    p.add_argument("--model", default=None, help="checkpoint (default: the testbed warm-up)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="1 timed step of 8 prompts")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    return p.parse_args(argv)


def matmul_gflops(n: int, k: int, m: int, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """Sustained GFLOP/s of an (n, k) @ (k, m) product."""
    a, b = torch.randn(n, k, dtype=dtype), torch.randn(k, m, dtype=dtype)
    for _ in range(2):
        a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * n * k * m * reps / (time.perf_counter() - t0) / 1e9


def peaks(seconds: float, names: tuple[str, ...]) -> dict[str, float]:
    """The measured peak of each precision in `names` ('fp32', 'bf16')."""
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if name not in names:
            continue
        rates = [matmul_gflops(*shape, dtype, seconds) for shape in SHAPES]
        print(f"matmul {name}: " + ", ".join(f"{'x'.join(map(str, s))} {r:.0f}"
                                             for s, r in zip(SHAPES, rates)) + " GFLOP/s")
        out[name] = max(rates)
    return out


def counted(fn) -> float:
    """FLOPs executed by fn()."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def measure_step(trainer: Trainer) -> dict:
    """One step's generation and training: seconds and FLOP/s (trees are keyed by the step, so
    growing them twice gives the same trees)."""
    problems = trainer.task.train_batch(trainer.cfg.train.prompts_per_step, trainer.problem_rng)
    trees, m = trainer.rollout(problems)
    gen_flops = counted(lambda: trainer.rollout(problems))
    t0 = time.perf_counter()
    batches, _ = trainer.prepare_batches(trees)  # layout, reference log-probs, advantages
    trainer.update(batches)
    train_s = time.perf_counter() - t0

    def train_work():  # what the timed part ran: the layout, then every update pass
        batches, _ = trainer.prepare_batches(trees)
        for _ in range(trainer.cfg.train.num_iterations):
            for batch in batches:
                train_pass(trainer, batch)

    train_flops = counted(train_work)
    trainer.step += 1
    return {"gen_gflops": gen_flops / m["time/generate_s"] / 1e9, "gen_s": m["time/generate_s"],
            "train_gflops": train_flops / train_s / 1e9, "train_s": train_s,
            "tokens": sum(b.num_tokens for b in batches)}


def main(argv=None) -> None:
    args = parse_args(argv)
    args.model = args.model or str(warmup())
    if args.quick:
        args.steps = 1
    print(f"torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as out:
        extra = [f"train.out_dir={out}", "train.tensorboard=false", f"train.init={args.model}"]
        extra += ["train.prompts_per_step=8"] if args.quick else []
        trainer = Trainer(load_config([resolve_config_path(args.config)], extra + args.set),
                          progress=False)
        prec = "bf16" if trainer.cfg.train.autocast == "bf16" else "fp32"
        peak = peaks(0.3 if args.quick else 1.0, ("fp32", prec))
        trainer.train_step()  # untimed
        rows = [measure_step(trainer) for _ in range(args.steps)]
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"\nconfig {args.config}  model {trainer.cfg.train.init}  packed "
          f"{trainer.cfg.train.pack_trees}  training precision {prec}  (medians of {args.steps})")
    print(f"{'what':12s} {'seconds':>8s} {'GFLOP/s':>8s} {'peak':>6s} {'share':>6s}")
    print(f"{'training':12s} {med['train_s']:8.2f} {med['train_gflops']:8.1f} {peak[prec]:6.0f} "
          f"{med['train_gflops'] / peak[prec]:6.1%}   (target >= 50%)")
    print(f"{'generation':12s} {med['gen_s']:8.2f} {med['gen_gflops']:8.1f} {peak['fp32']:6.0f} "
          f"{med['gen_gflops'] / peak['fp32']:6.1%}   (fp32 engine)")


if __name__ == "__main__":
    main()
