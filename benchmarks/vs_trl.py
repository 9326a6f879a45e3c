"""TRL's GRPOTrainer vs ibtpo's GRPO: seconds per step for the same work, one process, alternating.

    .venv/bin/pip install -c constraints.txt -e '.[trl]'     # once (TRL is not in `make test`)
    .venv/bin/python benchmarks/vs_trl.py [--model DIR] [--steps 20] [--quick] [--set k=v ...]

Both sides start from the same checkpoint (default: the testbed's warm-up, runs/testbed/sft, made
when missing) with the same tokenizer and prompt token ids, prompts per step, group size
G (`rollout.b0` of the grpo config), generation length (`sampling.max_new_tokens`), temperature,
learning rate and warm-up, AdamW settings, gradient clipping, clip range, KL coefficient
(`loss.beta_kl`, so both keep a reference model), loss aggregation (ibtpo's `seq-mean-token-mean`
is TRL's `loss_type="grpo"`), reward function and precision (`--bf16`: TRL's `bf16=True`, ibtpo's
`train.autocast=bf16`). Prompts come from the config's task; each side draws its own. One
difference remains: TRL's linear warm-up starts at lr 0 (step i gets i / warmup), ibtpo's at
lr / warmup ((i + 1) / warmup).

Alternation: the ibtpo step runs inside TRL's `on_step_end` callback, so every TRL step is followed
by one ibtpo step in the same process and threads (machine drift hits both sides alike). A TRL step
is timed from `on_step_begin` to `on_step_end`; its generation from the start to the end of
`_generate_and_score_completions` (generation, rewards and TRL's old/reference log-prob forwards,
as TRL structures it); ibtpo's split is `time/rollout_s` (tree growing: generation and rewards)
and `time/train_s` (batch, reference forward, advantages, update). The first `--warmup` steps of
each side are not timed. Printed: median seconds per step, generation / update split, generated
tokens per step, and the mean rollout reward of the first and last five steps.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import warmup
from ibtpo.config import load_config, resolve_config_path
from ibtpo.data import load_task
from ibtpo.models import encode_prompt, load_model, save_checkpoint
from ibtpo.training.trainer import Trainer


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="checkpoint dir (default: the testbed warm-up)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per side")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides")
    p.add_argument("--quick", action="store_true",
                   help="4 prompts x 4, 3 timed steps (a smoke run)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="ibtpo config override, also applied to TRL's matching settings")
    return p.parse_args(argv)


def ibtpo_config(args, out: str):
    extra = [f"train.out_dir={out}/ibtpo", "train.tensorboard=false", f"train.init={args.model}"]
    if args.quick:
        extra += ["train.prompts_per_step=4", "rollout.b0=4"]
    if args.bf16:
        extra.append("train.autocast=bf16")
    return load_config([resolve_config_path("grpo")], extra + args.set)


def trl_tokenizer(tokenizer, prompts: list[str]):
    """The tokenizer TRL will call as `tokenizer(text)`: it must give ibtpo's prompt ids (BOS +
    text); the built-in character tokenizer adds no BOS by itself, so a copy gets a post-processor
    that does. Exits when the ids still differ."""
    from tokenizers import processors

    want = [encode_prompt(tokenizer, p) for p in prompts]
    if [tokenizer(p)["input_ids"] for p in prompts] != want:
        tokenizer = type(tokenizer)(tokenizer_object=tokenizer.backend_tokenizer.__class__.from_str(
            tokenizer.backend_tokenizer.to_str()), **tokenizer.special_tokens_map,
            clean_up_tokenization_spaces=False, split_special_tokens=True)
        bos = tokenizer.bos_token
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, tokenizer.bos_token_id)])
    if [tokenizer(p)["input_ids"] for p in prompts] != want:
        sys.exit("vs_trl: cannot make TRL tokenize prompts as ibtpo does (BOS + text)")
    return tokenizer


def trl_args(cfg, out: str, steps: int, bf16: bool):
    from trl import GRPOConfig

    g, t, lc, s = cfg.rollout.b0, cfg.train, cfg.loss, cfg.sampling
    assert lc.agg_mode == "seq-mean-token-mean", "TRL's loss_type='grpo' is seq-mean-token-mean"
    micro = min(t.micro_batch_size, t.prompts_per_step * g)
    return GRPOConfig(
        output_dir=f"{out}/trl", max_steps=steps, per_device_train_batch_size=micro,
        gradient_accumulation_steps=t.prompts_per_step * g // micro, num_generations=g,
        max_completion_length=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
        top_k=s.top_k, learning_rate=t.lr, lr_scheduler_type="constant_with_warmup",
        warmup_steps=t.warmup_steps, weight_decay=t.weight_decay, max_grad_norm=t.grad_clip,
        beta=lc.beta_kl, epsilon=lc.eps_low, epsilon_high=lc.eps_high, loss_type="grpo",
        scale_rewards="group", num_iterations=t.num_iterations, bf16=bf16, use_cpu=True,
        report_to="none", save_strategy="no", logging_steps=1, seed=t.seed,
        dataloader_num_workers=0, disable_tqdm=True, log_completions=False,
        model_init_kwargs={"dtype": cfg.model.dtype})


class Alternate:
    """TRL callback: times each TRL step and runs one ibtpo step after it."""

    def __init__(self, ibtpo: Trainer, warmup: int, completions: int):
        from transformers import TrainerCallback

        self.callback = type("AlternateCallback", (TrainerCallback,), {
            "on_step_begin": lambda _s, *a, **k: self.begin(),
            "on_step_end": lambda _s, *a, **k: self.end(),
            "on_log": lambda _s, args, state, control, logs=None, **k: self.log(logs)})()
        self.ibtpo, self.warmup, self.completions, self.t0 = ibtpo, warmup, completions, 0.0
        self.trl_rows: list[dict] = []
        self.ibtpo_rows: list[dict] = []
        self.gen_s = 0.0

    def begin(self) -> None:
        self.gen_s = 0.0
        self.t0 = time.perf_counter()

    def end(self) -> None:
        self.trl_rows.append({"step_s": time.perf_counter() - self.t0, "gen_s": self.gen_s})
        m = self.ibtpo.train_step()
        self.ibtpo_rows.append({"step_s": m["time/step_s"], "gen_s": m["time/rollout_s"],
                                "reward": m["rollout/reward_mean"],
                                "gen_tokens": m["rollout/generated_tokens"]})

    def log(self, logs) -> None:
        if logs and "reward" in logs and self.trl_rows:
            self.trl_rows[-1]["reward"] = logs["reward"]
            mean_len = logs.get("completions/mean_length", 0.0)
            self.trl_rows[-1]["gen_tokens"] = mean_len * self.completions

    def wrap_generation(self, trainer) -> None:
        inner = trainer._generate_and_score_completions

        def timed(*a, **k):
            t0 = time.perf_counter()
            out = inner(*a, **k)
            self.gen_s += time.perf_counter() - t0
            return out

        trainer._generate_and_score_completions = timed


def summary(rows: list[dict], warmup: int) -> dict:
    timed = rows[warmup:]
    step = statistics.median(r["step_s"] for r in timed)
    gen = statistics.median(r["gen_s"] for r in timed)
    rewards = [r.get("reward", float("nan")) for r in rows]
    return {"step_s": step, "gen_s": gen, "update_s": step - gen,
            "gen_tokens": statistics.median(r.get("gen_tokens", 0.0) for r in timed),
            "reward_first": sum(rewards[:5]) / len(rewards[:5]),
            "reward_last": sum(rewards[-5:]) / len(rewards[-5:])}


def main(argv=None) -> None:
    args = parse_args(argv)
    args.model = args.model or str(warmup())
    if args.quick:
        args.steps, args.warmup = 3, 1
    try:
        from datasets import Dataset
        from transformers import PrinterCallback
        from trl import GRPOTrainer
    except ImportError:
        sys.exit("vs_trl: TRL is not installed: "
                 ".venv/bin/pip install -c constraints.txt -e '.[trl]'")
    with tempfile.TemporaryDirectory() as out:
        cfg = ibtpo_config(args, out)
        ibtpo = Trainer(cfg, progress=False)
        steps = args.steps + args.warmup
        task = load_task(cfg.task)
        problems = task.train_batch(steps * cfg.train.prompts_per_step, random.Random(1))
        data = Dataset.from_list([{"prompt": p.prompt, **p.columns()} for p in problems])
        model, tokenizer = load_model(cfg.train.init, "cpu", cfg.model.dtype)
        path = Path(cfg.train.init)
        if not path.is_dir():  # a preset: TRL loads its policy and reference from a directory
            path = Path(out) / "init"
            save_checkpoint(model, tokenizer, path, {})
        tokenizer = trl_tokenizer(tokenizer, [p.prompt for p in problems[:8]])
        alt = Alternate(ibtpo, args.warmup, cfg.train.prompts_per_step * cfg.rollout.b0)
        trl = GRPOTrainer(model=str(path), reward_funcs=ibtpo.policy.reward_fn,
                          args=trl_args(cfg, out, steps, args.bf16), train_dataset=data,
                          processing_class=tokenizer, callbacks=[alt.callback])
        alt.wrap_generation(trl)
        trl.remove_callback(PrinterCallback)  # TRL's per-step log dicts; the table says it all
        print(f"model {cfg.train.init}  prompts/step {cfg.train.prompts_per_step}  G "
              f"{cfg.rollout.b0}  max_new_tokens {cfg.sampling.max_new_tokens}  lr {cfg.train.lr}"
              f"  beta_kl {cfg.loss.beta_kl}  precision {'bf16' if args.bf16 else 'fp32'}  "
              f"threads {torch.get_num_threads()}  steps {args.steps} timed + {args.warmup}")
        trl.train()
        report(summary(alt.trl_rows, args.warmup), summary(alt.ibtpo_rows, args.warmup))


def report(trl: dict, ours: dict) -> None:
    print(f"\n{'side':8s} {'s/step':>8s} {'gen s':>7s} {'update s':>9s} {'gen tok':>8s} "
          f"{'reward first5':>14s} {'reward last5':>13s}")
    for name, m in (("TRL", trl), ("ibtpo", ours)):
        print(f"{name:8s} {m['step_s']:8.2f} {m['gen_s']:7.2f} {m['update_s']:9.2f} "
              f"{m['gen_tokens']:8.0f} {m['reward_first']:14.3f} {m['reward_last']:13.3f}")
    print(f"\nibtpo / TRL seconds per step: {ours['step_s'] / trl['step_s']:.2f} (target <= 0.5)")


if __name__ == "__main__":
    main()
