"""Seconds per RL step and per 1k generated tokens, GRPO vs IB-TPO, packed vs padded batches,
synchronous vs continuous tree growth.

    .venv/bin/python benchmarks/step_time.py [--model DIR] [--steps 5] [--prompts 16] [--quick]
                                             [--runs NAME,...] [--set section.key=value ...]

Five trainers from the same checkpoint (default: the testbed's warm-up, runs/testbed/sft, made
when missing; `--model` overrides it with another checkpoint or a preset such as `nano`), with
every other setting from the built-in `grpo` and `ibtpo` configs (`--set` overrides all, e.g.
`--set train.compile=true`): GRPO and IB-TPO, each with `train.pack_trees` true (packed trees)
and false (one padded row per trajectory), and IB-TPO packed with `rollout.scheduler=continuous`
("ibtpo cont."), also with branch-prefix KV reuse (`rollout.prefix_cache_mb=1024`, "ibtpo
cont.kv"). Every trainer samples the same prompts from the same seeds. Their steps
alternate round-robin in this process, so machine drift hits all alike; one untimed step each
comes first. Printed per trainer, medians over the timed steps: seconds per step (rollout +
update), seconds per 1k generated tokens, prefill's share of the engine's time, decode forwards
per rollout and the mean rows in each ("rows in flight"), and the tokens one training forward runs
through the model (`train/batch_tokens`); for the packed trainers also the padded batch the same
trees would give, and the ratio. Then P4 = IB-TPO / GRPO seconds per 1k generated tokens, for
each scheduler.
Targets (issues 10, 16): P4 <= 1; IB-TPO's packed tokens <= 0.7x padded. `--quick` is a smoke
run (2 timed steps of 8 prompts), not a measurement.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

import ibtpo.rollout.engines.kv_cache as engine_module
from common import warmup
from ibtpo.config import load_config, resolve_config_path
from ibtpo.training.batch import from_trees
from ibtpo.training.trainer import Trainer

KV = "rollout.prefix_cache_mb=1024"
RUNS = {  # name -> (config, packed, scheduler, overrides)
    "grpo packed": ("grpo", True, "sync", []), "grpo padded": ("grpo", False, "sync", []),
    "ibtpo packed": ("ibtpo", True, "sync", []), "ibtpo padded": ("ibtpo", False, "sync", []),
    "ibtpo cont.": ("ibtpo", True, "continuous", []),
    "ibtpo cont.kv": ("ibtpo", True, "continuous", [KV])}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint (default: the testbed warm-up)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per trainer")
    p.add_argument("--prompts", type=int, default=16, help="prompts per step")
    p.add_argument("--quick", action="store_true", help="2 timed steps of 8 prompts")
    p.add_argument("--runs", default=",".join(RUNS),
                   help=f"trainers to run, comma-separated (default: all of {', '.join(RUNS)})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    return p.parse_args(argv)


class DecodeCounter:
    """Decode forwards and the rows they carry (wraps `rollout.engines.kv_cache.extend`, which
    both the engine's loop and the continuous scheduler's row pool call)."""

    def __init__(self):
        self.calls, self.rows, self.inner = 0, 0, engine_module.extend
        engine_module.extend = self

    def __call__(self, model, state, tokens):
        self.calls += 1
        self.rows += int(tokens.shape[0])
        return self.inner(model, state, tokens)


class PrefillClock:
    """Seconds spent in the engine's prefill (wraps `rollout.engines.kv_cache.prefill`)."""

    def __init__(self):
        self.seconds, self.inner = 0.0, engine_module.prefill
        engine_module.prefill = self

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0


def make_trainer(name: str, packed: bool, scheduler: str, sets: list[str], args,
                 out: str) -> Trainer:
    extra = [f"train.prompts_per_step={args.prompts}",
             f"train.out_dir={out}/{name}{packed}{scheduler}{len(sets)}", "train.tensorboard=false",
             f"train.pack_trees={str(packed).lower()}", f"rollout.scheduler={scheduler}",
             f"train.init={args.model}", *sets]
    trainer = Trainer(load_config([resolve_config_path(name)], extra + args.set), progress=False)
    inner, pad = trainer.make_batch, trainer.policy.tokenizer.pad_token_id

    def make_batch(trees):  # records the padded batch the same trees would give
        trainer.padded_tokens = from_trees(trees, None, pad).num_tokens
        return inner(trees)

    trainer.make_batch = make_batch
    return trainer


def one_step(trainer: Trainer, clock: PrefillClock, counter: DecodeCounter) -> dict:
    clock.seconds, counter.calls, counter.rows = 0.0, 0, 0
    m = trainer.train_step()
    m["prefill_s"] = clock.seconds
    m["decode_steps"], m["decode_rows"] = counter.calls, counter.rows
    m["padded_tokens"] = trainer.padded_tokens
    return m


def summarise(rows: list[dict]) -> dict:
    med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
    return {"step_s": med("time/step_s"), "rollout_s": med("time/rollout_s"),
            "update_s": med("time/train_s"), "gen_tokens": med("rollout/generated_tokens"),
            "s_per_1k": statistics.median(1000 * r["time/step_s"] / r["rollout/generated_tokens"]
                                          for r in rows),
            "prefill": statistics.median(r["prefill_s"] / r["time/generate_s"] for r in rows),
            "decode_steps": med("decode_steps"),
            "in_flight": statistics.median(r["decode_rows"] / max(r["decode_steps"], 1)
                                           for r in rows),
            "batch_tokens": med("train/batch_tokens"), "padded_tokens": med("padded_tokens"),
            "traj_tokens": med("train/trajectory_tokens"), "reward": med("rollout/reward_mean")}


def report(res: dict[str, dict]) -> None:
    print(f"\n{'trainer':13s} {'s/step':>7s} {'rollout':>8s} {'update':>7s} {'gen tok':>8s} "
          f"{'s/1k tok':>9s} {'prefill':>8s} {'decode':>7s} {'in flight':>10s} "
          f"{'model tok':>10s} {'padded tok':>11s} {'ratio':>6s} {'reward':>7s}")
    for name, m in res.items():
        print(f"{name:13s} {m['step_s']:7.2f} {m['rollout_s']:8.2f} {m['update_s']:7.2f} "
              f"{m['gen_tokens']:8.0f} {m['s_per_1k']:9.3f} {m['prefill']:8.1%} "
              f"{m['decode_steps']:7.0f} {m['in_flight']:10.1f} "
              f"{m['batch_tokens']:10.0f} {m['padded_tokens']:11.0f} "
              f"{m['batch_tokens'] / m['padded_tokens']:6.2f} {m['reward']:7.3f}")
    print("(decode: one-token forwards per rollout; in flight: mean rows per decode forward)")
    report_ratios(res)


def report_ratios(res: dict[str, dict]) -> None:
    """P4 per scheduler, and the packing and update ratios of the trainers that ran."""
    gr = res.get("grpo packed")
    for name, label in (("ibtpo packed", "sync"), ("ibtpo cont.", "continuous"),
                        ("ibtpo cont.kv", "continuous + prefix KV reuse")):
        if gr and name in res:
            ib = res[name]
            print(f"P4 = IB-TPO / GRPO seconds per 1k generated tokens (packed, {label} "
                  f"scheduler): {ib['s_per_1k'] / gr['s_per_1k']:.2f} (target <= 1); rollout "
                  f"alone: {per_1k(ib, 'rollout_s') / per_1k(gr, 'rollout_s'):.2f}")
    ib = res.get("ibtpo packed")
    if ib:
        print(f"IB-TPO tokens through the model, packed / padded (same trees): "
              f"{ib['batch_tokens'] / ib['padded_tokens']:.2f} (target <= 0.7); packed / "
              f"unpadded rows: {ib['batch_tokens'] / ib['traj_tokens']:.2f}")
    ratios = [f"{label} {res[f'{m} packed']['update_s'] / res[f'{m} padded']['update_s']:.2f}"
              for m, label in (("grpo", "GRPO"), ("ibtpo", "IB-TPO"))
              if f"{m} packed" in res and f"{m} padded" in res]
    if ratios:
        print("update seconds, packed / padded: " + ", ".join(ratios))


def per_1k(m: dict, key: str) -> float:
    """Median seconds of `key` per 1k generated tokens."""
    return 1000 * m[key] / m["gen_tokens"]


def chosen_runs(spec: str) -> dict:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    bad = [n for n in names if n not in RUNS]
    if bad or not names:
        raise SystemExit(f"--runs: got {spec!r}, expected names among {', '.join(RUNS)}")
    return {n: RUNS[n] for n in names}


def main(argv=None) -> None:
    args = parse_args(argv)
    runs = chosen_runs(args.runs)
    args.model = args.model or str(warmup())
    if args.quick:
        args.steps, args.prompts = 2, 8
    clock, counter = PrefillClock(), DecodeCounter()
    with tempfile.TemporaryDirectory() as out:
        trainers = {name: make_trainer(cfg, packed, scheduler, sets, args, out)
                    for name, (cfg, packed, scheduler, sets) in runs.items()}
        first = next(iter(trainers.values())).cfg
        print(f"model {first.train.init}  prompts/step {args.prompts}  max_new_tokens "
              f"{first.sampling.max_new_tokens}  torch threads {torch.get_num_threads()}  "
              f"timed steps {args.steps} (+1 untimed), alternating; overrides {args.set or '-'}")
        rows = {name: [] for name in trainers}
        for step in range(args.steps + 1):
            for name, trainer in trainers.items():
                m = one_step(trainer, clock, counter)
                if step:
                    rows[name].append(m)
        report({name: summarise(r) for name, r in rows.items()})


if __name__ == "__main__":
    main()
