"""Command line: ``ibtpo sft | train | eval | score | export | compare | demo | config``.

Every command takes ``--config FILE`` (repeatable; a file path or a built-in name such as
``ibtpo`` or ``grpo``) and ``--set section.key=value`` (repeatable). ``eval`` and ``score`` of a
checkpoint ibtpo wrote, and ``train --resume``, start from the config recorded with the run (the
checkpoint's ibtpo.json; never its ``model.trust_remote_code``), which ``--config`` and ``--set``
override. Bad configs and bad inputs
print one message listing every problem and exit with status 2, without a traceback; ``--debug``
(or ``IBTPO_DEBUG=1``) prints the traceback too, to tell an internal error from bad input.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

from ibtpo import __version__
from ibtpo.config import (
    Config,
    ConfigError,
    builtin_config_names,
    describe,
    describe_valid,
    load_config,
    resolve_config_path,
)

DESCRIPTION = ("ibtpo: IB-TPO (information-bottleneck tree-based policy optimization), GRPO and "
               "tree baselines for RL on LLM reasoning; train, evaluate, compare at equal "
               "generated tokens, and measure the IB-Score.")
DEBUG_ENV = "IBTPO_DEBUG"


def _config(args: argparse.Namespace, base: dict | None = None, source: str = "base") -> Config:
    paths = [resolve_config_path(c) for c in args.config]
    return load_config(paths, list(args.set), base=base, base_source=source)


def recorded_run(args: argparse.Namespace) -> str | None:
    """The checkpoint whose recorded config a command starts from: ``eval`` / ``score --model``
    (a run directory: its newest checkpoint), ``train --resume`` (the newest in
    train.out_dir); None for every other command."""
    from ibtpo.runs import checkpoint_of, latest_checkpoint

    if args.command in ("eval", "score") and args.model:
        return checkpoint_of(args.model)
    if args.command == "train" and args.resume:
        found = latest_checkpoint(_config(args).train.out_dir)
        return str(found) if found else None
    return None


def command_config(args: argparse.Namespace, say: bool = False) -> Config:
    """The command's config: defaults <- the config recorded with the run (`recorded_run`'s
    ibtpo.json) <- --config files <- --set; with `say`, one line on stderr names the file."""
    from ibtpo.runs import EXTRA_FILE, recorded_config

    run = recorded_run(args)
    recorded, dropped = recorded_config(run) if run else ({}, [])
    if not recorded:
        return _config(args)
    source = str(Path(run) / EXTRA_FILE)
    if say:
        old = f"; fields this version lacks, ignored: {', '.join(dropped)}" if dropped else ""
        print(f"ibtpo {args.command}: the config recorded with the run ({source}); --config and "
              f"--set override it{old}", file=sys.stderr)
    return _config(args, recorded, source)


def _progress(args: argparse.Namespace) -> bool | str:
    """A live bar on a terminal (plain lines elsewhere), or plain lines with --no-progress."""
    return "lines" if args.no_progress else True


def cmd_sft(args):
    cfg = _config(args)
    from rich.console import Console

    from ibtpo.evaluation import format_table
    from ibtpo.models import describe_fingerprint
    from ibtpo.progress import counted
    from ibtpo.training.sft import run_sft

    final = run_sft(cfg, progress=_progress(args))
    title = (f"warm-up: {counted(final['steps'], 'step')} in {final['train_seconds']:.0f} s -> "
             f"{cfg.sft.out_dir}")
    Console().print(format_table(final, cfg.eval.k, title))
    print(f"fingerprint: {describe_fingerprint(final['fingerprint'])}")


def _model(path: str) -> str:
    """A --model argument: a run directory (or its checkpoints/) means its newest checkpoint."""
    from ibtpo.export import checkpoint_of

    return checkpoint_of(path)


def cmd_eval(args):
    cfg = command_config(args, say=True)
    from ibtpo.evaluation import run_eval

    run_eval(cfg, _model(args.model), args.out)


def cmd_train(args):
    cfg = command_config(args, say=True)
    from ibtpo.training.trainer import Trainer

    check_init(cfg)
    start = time.monotonic()
    trainer = Trainer(cfg, resume=args.resume, progress=_progress(args))
    last = trainer.train()
    if trainer.stop.signum is not None:  # SIGINT / SIGTERM: checkpoint written, exit 128 + n
        if trainer.dist.is_main:
            print(f"ibtpo train: stopped at step {trainer.step} by signal {trainer.stop.signum}; "
                  f"checkpoint in {cfg.train.out_dir}/checkpoints; {resume_hint(cfg)}",
                  file=sys.stderr)
        return 128 + trainer.stop.signum
    if trainer.dist.is_main:
        print(train_summary(trainer, last, time.monotonic() - start))


def resume_hint(cfg: Config) -> str:
    """How to continue a stopped run: the command, and that it takes the run's own config."""
    return (f"continue with `ibtpo train --resume --set train.out_dir={cfg.train.out_dir}`: it "
            "uses the config recorded with the run (its checkpoint's ibtpo.json); --set "
            "overrides a field")


def check_init(cfg: Config) -> None:
    """A clear error when ``train.init`` is the warm-up checkpoint and it was never made."""
    init = cfg.train.init
    if init in (cfg.sft.out_dir, "runs/sft") and not Path(init).exists():
        raise ValueError(f"train.init={init!r}: no such checkpoint. It is the warm-up checkpoint "
                         f"that `ibtpo sft` writes (to sft.out_dir): run `ibtpo sft` first, or set "
                         "train.init to a model directory, a .gguf file or a preset (nano, mini, "
                         "tiny)")


def train_summary(trainer, last: dict, seconds: float) -> str:
    """One line on a finished run: steps, tokens, time, final evaluation, where things are."""
    from ibtpo.progress import counted
    from ibtpo.training.checkpoint import latest_checkpoint

    out = trainer.cfg.train.out_dir
    minutes, secs = divmod(int(seconds), 60)
    parts = [f"ibtpo train: done: {counted(trainer.step, 'step')}, "
             f"{counted(trainer.generated_tokens, 'generated token')} in {minutes} min "
             f"{secs:02d} s"]
    if "eval/pass@1" in last:
        parts.append(f"held-out pass@1 {last['eval/pass@1']:.3f}, avg@k {last['eval/avg@k']:.3f}")
    parts.append(f"checkpoint {latest_checkpoint(out)}; metrics {Path(out) / 'metrics.jsonl'}")
    return "; ".join(parts)


def cmd_score(args):
    cfg = command_config(args, say=True)
    from ibtpo.diagnostics import print_table, run_score, run_score_rollouts, score_table

    if args.rollouts:  # another framework's rollouts: the dynamics table and plot
        run_score_rollouts(cfg, args.rollouts, args.model and _model(args.model),
                           out_json=args.out)
        return
    if not args.model:
        raise ValueError("--model is required (or --rollouts FILE: rollouts of any framework)")
    result = run_score(cfg, _model(args.model), out_json=args.out, progress=_progress(args))
    print_table(score_table(result))


def cmd_export(args):
    cfg = _config(args)
    from ibtpo.export import run_export

    source = _model(args.model)  # a run directory: its newest checkpoint
    out = run_export(source, args.out, cfg.model.dtype)
    print(f"exported {source} -> {out} (plain Hugging Face checkpoint)")


def cmd_compare(args):
    configs = [resolve_config_path(c) for c in args.configs]
    from ibtpo.compare import run_compare

    run_compare(configs, overrides=args.set, seeds=args.seeds, out_dir=args.out,
                token_budget=args.token_budget, steps=args.steps, progress=_progress(args),
                baseline=args.baseline, reuse=not args.no_reuse)


def cmd_demo(args):
    from ibtpo.compare import run_demo

    out = args.out or ("runs/demo" if args.task == "arithmetic" else f"runs/demo_{args.task}")
    run_demo(out_dir=out, overrides=args.set, progress=_progress(args), task=args.task)


def cmd_config(args):
    if args.config or args.set:
        import yaml

        print(yaml.safe_dump(_config(args).to_dict(), sort_keys=False), end="")
        return
    valid = describe_valid()
    for name, default, help_text in describe():
        choices = f" [{valid[name]}]" if valid[name].startswith("one of") else ""
        print(f"{name:34s} {default!r:22s} {help_text}{choices}")


def _common(p: argparse.ArgumentParser, config: bool = True) -> None:
    if config:
        p.add_argument("--config", action="append", default=[], metavar="FILE",
                       help="YAML config file or built-in name (repeatable; later wins); "
                            f"built-in: {', '.join(builtin_config_names())}")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (repeatable)")
    p.add_argument("--no-progress", action="store_true",
                   help="one plain line per step instead of a live progress bar (the default "
                        "when the output is not a terminal)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help=f"print the traceback of an error too (or {DEBUG_ENV}=1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ibtpo", description=DESCRIPTION, epilog=(
            f"built-in configs (--config NAME): {', '.join(builtin_config_names())}. "
            "`ibtpo config` lists every field with its default, meaning and choices. Errors print "
            f"one line and exit with status 2; --debug (or {DEBUG_ENV}=1) adds the traceback. "
            "Coming from TRL or verl: docs/FROM_TRL_VERL.md."))
    parser.add_argument("--version", action="version", version=f"ibtpo {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help=f"print the traceback of an error too (or {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sft", help="supervised warm-up on task solutions")
    _common(p)
    p.set_defaults(func=cmd_sft)
    p = sub.add_parser("train", help="RL training (IB-TPO, GRPO, tree baselines)")
    _common(p)
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in train.out_dir/checkpoints, with "
                        "the config recorded in it (--config and --set override it)")
    p.set_defaults(func=cmd_train)
    for name, func, text in (("eval", cmd_eval, "greedy pass@1 and avg@k on held-out problems"),
                             ("score", cmd_score, "IB-Score diagnostics of a policy's trees")):
        p = sub.add_parser(name, help=text)
        _common(p)
        p.add_argument("--model", required=name == "eval",
                       help="checkpoint directory, run directory (its newest checkpoint), "
                            ".gguf file or preset; a checkpoint ibtpo wrote brings the config "
                            "recorded with it (--config and --set override it)")
        p.add_argument("--out", default=None, help="write the results as JSON here")
        if name == "score":
            p.add_argument("--rollouts", default=None, metavar="FILE",
                           help="JSONL of rollouts from any framework (prompt_id, completion, "
                                "reward, optional step, tokens, logprobs): the IB-Score dynamics "
                                "per step, a table, --out JSON and its .png plot; --model "
                                "recomputes missing log-probs")
        p.set_defaults(func=func)
    p = sub.add_parser("export", help="a policy as a plain HF checkpoint (LoRA merged)")
    _common(p)
    p.add_argument("--model", required=True,
                   help="checkpoint, run directory (its newest checkpoint), LoRA checkpoint, "
                        ".gguf file or preset to export")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("compare", help="run configs at the same generated-token budget (or the "
                                       "same number of optimizer steps)")
    p.add_argument("configs", nargs="+", help="config files or built-in names")
    _common(p, config=False)
    p.add_argument("--seeds", type=int, default=1, help="seeds per config (default 1)")
    p.add_argument("--token-budget", type=int, default=None,
                   help="generated tokens per run (default: train.token_budget of the configs)")
    p.add_argument("--steps", type=int, default=None,
                   help="train every run for this many optimizer steps instead (equal prompts); "
                        "the table reports the tokens each used")
    p.add_argument("--baseline", default=None,
                   help="config the paired differences are taken against (default: the first)")
    p.add_argument("--no-reuse", action="store_true",
                   help="retrain runs that already finished with the same config")
    p.add_argument("--out", default="runs/compare", help="output directory")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("demo", help="warm-up, then GRPO vs IB-TPO on a built-in task")
    _common(p, config=False)
    p.add_argument("--task", default="arithmetic", choices=("arithmetic", "countdown"),
                   help="arithmetic (default: 3 seeds x 100k tokens, about 7 min on 2 cores) or "
                        "countdown (Study 5's cell: 3 seeds x 1M tokens, about 35 min)")
    p.add_argument("--out", default=None,
                   help="output directory (default runs/demo, or runs/demo_countdown)")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("config", help="list every config field, or print the resolved config")
    _common(p)
    p.set_defaults(func=cmd_config)
    return parser


def _quiet_transformers() -> None:
    """The CLI shows its own progress; transformers' per-file bars and notices are noise there."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _pin_kernels(args: argparse.Namespace) -> None:
    """Pin the CPU kernels of the command's config (``model.kernels``) before torch is imported;
    a config that does not load is left to the command, which reports it."""
    from ibtpo import kernels

    try:
        if args.command == "compare":
            cfg = load_config([resolve_config_path(args.configs[0])], list(args.set))
        elif args.command == "demo":
            cfg = load_config(overrides=list(args.set))
        else:
            cfg = command_config(args)
    except (ValueError, OSError):
        return
    kernels.pin(cfg.model.kernels)


def debug_on(args: argparse.Namespace) -> bool:
    """--debug, or the environment variable IBTPO_DEBUG set to anything but '' or '0'."""
    return bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    """Print the error's one-line `message` (after its traceback under --debug); return `code`.
    Call it while the exception is being handled."""
    if debug_on(args):
        traceback.print_exc()
    print(message, file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _pin_kernels(args)
    if args.command != "config":
        _quiet_transformers()
    from ibtpo.training.faults import TrainingError

    try:
        code = args.func(args)
    except ConfigError as err:
        return _fail(args, f"ibtpo {args.command}: {err}", 2)
    except (ValueError, OSError, ImportError) as err:  # bad input: a file, a path, a package
        return _fail(args, f"ibtpo {args.command}: error: {err}", 2)
    except TrainingError as err:
        return _fail(args, f"ibtpo {args.command}: {err}", 1)
    except KeyboardInterrupt:
        return _fail(args, f"ibtpo {args.command}: interrupted", 130)
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
