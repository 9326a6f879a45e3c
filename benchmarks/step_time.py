"""Seconds per RL step and per 1k generated tokens, GRPO vs IB-TPO, packed vs padded batches.

    .venv/bin/python benchmarks/step_time.py [--model DIR] [--steps 5] [--prompts 16] [--quick]
                                             [--set section.key=value ...]

Four trainers from the same checkpoint (default: the testbed's warm-up, runs/testbed/sft, made
when missing; `--model` overrides it), with every other setting from the built-in `grpo` and
`ibtpo` configs (`--set` overrides both, e.g. `--set train.compile=true`):
GRPO and IB-TPO, each with `train.pack_trees` true (packed trees) and false (one padded row per
trajectory). Their steps alternate round-robin in this process, so machine drift hits all four
alike; one untimed step each comes first. Printed per trainer, medians over the timed steps:
seconds per step (rollout + update), seconds per 1k generated tokens, prefill's share of the
engine's time, and the tokens one training forward runs through the model (`train/batch_tokens`);
for the packed trainers also the padded batch the same trees would give, and the ratio.
Targets (issue 10): IB-TPO's wall time per generated token <= GRPO's; IB-TPO's packed tokens
<= 0.7x padded.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

import ibtpo.rollout.engine as engine_module
from common import warmup
from ibtpo.config import load_config, resolve_config_path
from ibtpo.training.batch import from_trees
from ibtpo.training.trainer import Trainer

RUNS = {"grpo packed": ("grpo", True), "grpo padded": ("grpo", False),
        "ibtpo packed": ("ibtpo", True), "ibtpo padded": ("ibtpo", False)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint (default: the testbed warm-up)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per trainer")
    p.add_argument("--prompts", type=int, default=16, help="prompts per step")
    p.add_argument("--quick", action="store_true", help="2 timed steps of 8 prompts")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    return p.parse_args(argv)


class PrefillClock:
    """Seconds spent in the engine's prefill (wraps `rollout.engine.prefill`)."""

    def __init__(self):
        self.seconds, self.inner = 0.0, engine_module.prefill
        engine_module.prefill = self

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0


def make_trainer(name: str, packed: bool, args, out: str) -> Trainer:
    extra = [f"train.prompts_per_step={args.prompts}", f"train.out_dir={out}/{name}{packed}",
             "train.tensorboard=false", f"train.pack_trees={str(packed).lower()}",
             f"train.init={args.model}"]
    trainer = Trainer(load_config([resolve_config_path(name)], extra + args.set), progress=False)
    inner, pad = trainer.make_batch, trainer.policy.tokenizer.pad_token_id

    def make_batch(trees):  # records the padded batch the same trees would give
        trainer.padded_tokens = from_trees(trees, None, pad).num_tokens
        return inner(trees)

    trainer.make_batch = make_batch
    return trainer


def one_step(trainer: Trainer, clock: PrefillClock) -> dict:
    clock.seconds = 0.0
    m = trainer.train_step()
    m["prefill_s"] = clock.seconds
    m["padded_tokens"] = trainer.padded_tokens
    return m


def summarise(rows: list[dict]) -> dict:
    med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
    return {"step_s": med("time/step_s"), "rollout_s": med("time/rollout_s"),
            "update_s": med("time/train_s"), "gen_tokens": med("rollout/generated_tokens"),
            "s_per_1k": statistics.median(1000 * r["time/step_s"] / r["rollout/generated_tokens"]
                                          for r in rows),
            "prefill": statistics.median(r["prefill_s"] / r["time/generate_s"] for r in rows),
            "batch_tokens": med("train/batch_tokens"), "padded_tokens": med("padded_tokens"),
            "traj_tokens": med("train/trajectory_tokens"), "reward": med("rollout/reward_mean")}


def report(res: dict[str, dict]) -> None:
    print(f"\n{'trainer':13s} {'s/step':>7s} {'rollout':>8s} {'update':>7s} {'gen tok':>8s} "
          f"{'s/1k tok':>9s} {'prefill':>8s} {'model tok':>10s} {'padded tok':>11s} "
          f"{'ratio':>6s} {'reward':>7s}")
    for name, m in res.items():
        print(f"{name:13s} {m['step_s']:7.2f} {m['rollout_s']:8.2f} {m['update_s']:7.2f} "
              f"{m['gen_tokens']:8.0f} {m['s_per_1k']:9.3f} {m['prefill']:8.1%} "
              f"{m['batch_tokens']:10.0f} {m['padded_tokens']:11.0f} "
              f"{m['batch_tokens'] / m['padded_tokens']:6.2f} {m['reward']:7.3f}")
    ib, gr = res["ibtpo packed"], res["grpo packed"]
    print(f"\nIB-TPO / GRPO seconds per 1k generated tokens (packed): "
          f"{ib['s_per_1k'] / gr['s_per_1k']:.2f} (target <= 1)")
    print(f"IB-TPO tokens through the model, packed / padded (same trees): "
          f"{ib['batch_tokens'] / ib['padded_tokens']:.2f} (target <= 0.7); packed / unpadded "
          f"rows: {ib['batch_tokens'] / ib['traj_tokens']:.2f}")
    print(f"update seconds, packed / padded: GRPO "
          f"{gr['update_s'] / res['grpo padded']['update_s']:.2f}, IB-TPO "
          f"{ib['update_s'] / res['ibtpo padded']['update_s']:.2f}")


def main(argv=None) -> None:
    args = parse_args(argv)
    args.model = args.model or str(warmup())
    if args.quick:
        args.steps, args.prompts = 2, 8
    clock = PrefillClock()
    with tempfile.TemporaryDirectory() as out:
        trainers = {name: make_trainer(cfg, packed, args, out)
                    for name, (cfg, packed) in RUNS.items()}
        first = next(iter(trainers.values())).cfg
        print(f"model {first.train.init}  prompts/step {args.prompts}  max_new_tokens "
              f"{first.sampling.max_new_tokens}  torch threads {torch.get_num_threads()}  "
              f"timed steps {args.steps} (+1 untimed), alternating; overrides {args.set or '-'}")
        rows = {name: [] for name in trainers}
        for step in range(args.steps + 1):
            for name, trainer in trainers.items():
                m = one_step(trainer, clock)
                if step:
                    rows[name].append(m)
        report({name: summarise(r) for name, r in rows.items()})


if __name__ == "__main__":
    main()
