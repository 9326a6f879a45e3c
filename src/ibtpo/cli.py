"""Command line: ``ibtpo sft | train | eval | score | export | compare | demo | config``.

Every command takes ``--config FILE`` (repeatable; a file path or a built-in name such as
``ibtpo`` or ``grpo``) and ``--set section.key=value`` (repeatable). Bad configs and bad inputs
print one message listing every problem and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from ibtpo.config import Config, ConfigError, describe, load_config, resolve_config_path


def _config(args: argparse.Namespace, extra: list[str] = ()) -> Config:
    paths = [resolve_config_path(c) for c in args.config]
    return load_config(paths, list(extra) + list(args.set))


def cmd_sft(args):
    cfg = _config(args)
    from rich.console import Console

    from ibtpo.evaluation import format_table
    from ibtpo.models import describe_fingerprint
    from ibtpo.training.sft import run_sft

    final = run_sft(cfg, progress=not args.no_progress)
    Console().print(format_table(final, cfg.eval.k, f"warm-up: {final['steps']} steps in "
                                 f"{final['train_seconds']:.0f} s -> {cfg.sft.out_dir}"))
    print(f"fingerprint: {describe_fingerprint(final['fingerprint'])}")


def cmd_eval(args):
    cfg = _config(args)
    from ibtpo.evaluation import run_eval

    run_eval(cfg, args.model, args.out)


def cmd_train(args):
    cfg = _config(args)
    from ibtpo.training.trainer import Trainer

    trainer = Trainer(cfg, resume=args.resume, progress=not args.no_progress)
    trainer.train()
    if trainer.stop.signum is not None:  # SIGINT / SIGTERM: checkpoint written, exit 128 + n
        if trainer.dist.is_main:
            print(f"ibtpo train: stopped at step {trainer.step} by signal {trainer.stop.signum}; "
                  f"checkpoint in {cfg.train.out_dir}/checkpoints; continue with --resume",
                  file=sys.stderr)
        return 128 + trainer.stop.signum


def cmd_score(args):
    cfg = _config(args)
    from ibtpo.diagnostics import run_score

    result = run_score(cfg, args.model, out_json=args.out, progress=not args.no_progress)
    print(json.dumps(result, indent=2))


def cmd_export(args):
    cfg = _config(args)
    from ibtpo.export import run_export

    out = run_export(args.model, args.out, cfg.model.dtype)
    print(f"exported {args.model} -> {out} (plain Hugging Face checkpoint)")


def cmd_compare(args):
    configs = [resolve_config_path(c) for c in args.configs]
    from ibtpo.compare import run_compare

    run_compare(configs, overrides=args.set, seeds=args.seeds, out_dir=args.out,
                token_budget=args.token_budget, steps=args.steps, progress=not args.no_progress,
                baseline=args.baseline, reuse=not args.no_reuse)


def cmd_demo(args):
    from ibtpo.compare import run_demo

    run_demo(out_dir=args.out, overrides=args.set, progress=not args.no_progress)


def cmd_config(args):
    if args.config or args.set:
        import yaml

        print(yaml.safe_dump(_config(args).to_dict(), sort_keys=False), end="")
        return
    for name, default, help_text in describe():
        print(f"{name:34s} {default!r:22s} {help_text}")


def _common(p: argparse.ArgumentParser, config: bool = True) -> None:
    if config:
        p.add_argument("--config", action="append", default=[], metavar="FILE",
                       help="YAML config file or built-in name (repeatable; later wins)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ibtpo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sft", help="supervised warm-up on task solutions")
    _common(p)
    p.set_defaults(func=cmd_sft)
    p = sub.add_parser("train", help="RL training (IB-TPO, GRPO, tree baselines)")
    _common(p)
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in train.out_dir/checkpoints")
    p.set_defaults(func=cmd_train)
    for name, func, text in (("eval", cmd_eval, "greedy pass@1 and avg@k on held-out problems"),
                             ("score", cmd_score, "IB-Score diagnostics of a policy's trees")):
        p = sub.add_parser(name, help=text)
        _common(p)
        p.add_argument("--model", required=True, help="checkpoint directory or preset")
        p.add_argument("--out", default=None, help="write the results as JSON here")
        p.set_defaults(func=func)
    p = sub.add_parser("export", help="a policy as a plain HF checkpoint (LoRA merged)")
    _common(p)
    p.add_argument("--model", required=True,
                   help="checkpoint, LoRA checkpoint, .gguf file or preset to export")
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
    p = sub.add_parser("demo", help="warm-up, then GRPO vs IB-TPO on the built-in task")
    _common(p, config=False)
    p.add_argument("--out", default="runs/demo", help="output directory")
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
            cfg = _config(args)
    except (ValueError, OSError):
        return
    kernels.pin(cfg.model.kernels)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _pin_kernels(args)
    if args.command != "config":
        _quiet_transformers()
    from ibtpo.training.faults import TrainingError

    try:
        code = args.func(args)
    except ConfigError as err:
        print(f"ibtpo {args.command}: {err}", file=sys.stderr)
        return 2
    except (ValueError, OSError, ImportError) as err:  # bad input: a file, a path, a package
        print(f"ibtpo {args.command}: error: {err}", file=sys.stderr)
        return 2
    except TrainingError as err:
        print(f"ibtpo {args.command}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ibtpo {args.command}: interrupted", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
