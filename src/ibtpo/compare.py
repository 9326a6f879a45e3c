"""Fair comparisons: every config trains from the same warm-up checkpoint until the same number of
generated tokens (not steps), then a markdown table and plots against generated tokens.

``ibtpo demo`` = warm-up (reused when present) -> compare GRPO vs IB-TPO -> ``runs/demo/``.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from ibtpo.config import ConfigError, load_config
from ibtpo.metrics import read_metrics
from ibtpo.training.trainer import Trainer, config_with

TABLE_COLUMNS = (  # (header, metric, how it is summarised over a run)
    ("G", "rollout/trajectories_per_prompt", "mean"),
    ("tokens/prompt", "rollout/generated_tokens_per_prompt", "mean"),
    ("traj/1k tok", "rollout/trajectories_per_1k_tokens", "mean"),
    ("Eff-Rate", "rollout/eff_rate", "mean"),
    ("Avg-Rate", "rollout/reward_mean", "mean"),
    ("IB-Score", "tree/ib_score", "mean"),
    ("entropy", "policy/entropy", "last"),
)
PLOTS = ("eval/pass@1", "rollout/reward_mean", "rollout/eff_rate", "policy/entropy",
         "tree/ib_score", "tree/cov")


def summarise_run(rows: list[dict]) -> dict:
    """Final and warm-up evaluation, and each table column, from one run's metrics.jsonl rows."""
    evals = [r for r in rows if "eval/pass@1" in r]
    steps = [r for r in rows if r.get("train/step", 0) > 0]
    out = {"pass@1": evals[-1]["eval/pass@1"], "avg@k": evals[-1]["eval/avg@k"],
           "init_pass@1": evals[0]["eval/pass@1"], "steps": len(steps),
           "generated_tokens": steps[-1]["train/generated_tokens"] if steps else 0}
    for _, key, how in TABLE_COLUMNS:
        values = [r[key] for r in steps if key in r and r[key] == r[key]]
        out[key] = (values[-1] if how == "last" else statistics.fmean(values)) if values else None
    return out


def _fmt(values: list[float | None], digits: int = 3) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def markdown_table(results: dict[str, list[dict]]) -> str:
    """One row per config; ± is the standard deviation over seeds."""
    head = ["config", "seeds", "pass@1 (held-out)", "warm-up pass@1", "avg@k", "steps",
            "gen. tokens"] + [h for h, _, _ in TABLE_COLUMNS] + ["wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, runs in results.items():
        cells = [name, str(len(runs)), _fmt([r["pass@1"] for r in runs]),
                 _fmt([r["init_pass@1"] for r in runs]), _fmt([r["avg@k"] for r in runs]),
                 _fmt([r["steps"] for r in runs], 0), _fmt([r["generated_tokens"] for r in runs], 0)]
        cells += [_fmt([r[key] for r in runs]) for _, key, _ in TABLE_COLUMNS]
        cells.append(_fmt([r["wall_s"] for r in runs], 0))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(run_rows: dict[str, list[list[dict]]], path: Path) -> None:
    """One panel per metric in PLOTS, x = generated tokens, one line per config (mean of seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, key in zip(axes.flat, PLOTS):
        for name, seeds in run_rows.items():
            for i, rows in enumerate(seeds):
                pts = [(r["train/generated_tokens"], r[key]) for r in rows if key in r]
                if pts:
                    xs, ys = zip(*pts)
                    ax.plot(xs, ys, label=name if i == 0 else None, color=f"C{list(run_rows).index(name)}",
                            marker="o" if key.startswith("eval/") else None, alpha=0.9)
        ax.set_title(key)
        ax.set_xlabel("generated tokens")
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_compare(configs: list[Path], *, overrides: list[str] = (), seeds: int = 1,
                out_dir: str | Path = "runs/compare", token_budget: int | None = None,
                progress: bool = True) -> str:
    """Train every config for ``seeds`` seeds at one token budget; write table, JSON and plots."""
    out = Path(out_dir)
    cfgs = {Path(c).stem: load_config([c], list(overrides)) for c in configs}
    budget = token_budget or max(c.train.token_budget for c in cfgs.values())
    _check_comparable(cfgs, budget, seeds)
    results, curves = {}, {}
    for name, cfg in cfgs.items():
        results[name], curves[name] = [], []
        for seed in range(seeds):
            run_dir = out / name / f"seed{seed}"
            run_cfg = config_with(cfg, train={"seed": cfg.train.seed + seed, "token_budget": budget,
                                              "out_dir": str(run_dir)})
            print(f"== {name} seed {seed}: training to {budget} generated tokens -> {run_dir}")
            start = time.perf_counter()
            Trainer(run_cfg, progress=progress).train()
            rows = read_metrics(run_dir / "metrics.jsonl")
            results[name].append({**summarise_run(rows), "wall_s": time.perf_counter() - start})
            curves[name].append(rows)
    table = markdown_table(results)
    (out / "compare.md").write_text(f"# Comparison at {budget} generated tokens per run\n\n{table}")
    (out / "compare.json").write_text(json.dumps(results, indent=2))
    plot_curves(curves, out / "compare.png")
    print(table + f"\nwrote {out / 'compare.md'}, {out / 'compare.json'}, {out / 'compare.png'}")
    return table


def _check_comparable(cfgs: dict, budget: int, seeds: int) -> None:
    problems = []
    if budget <= 0:
        problems.append("train.token_budget: a comparison needs a generated-token budget "
                        "(pass --token-budget N or set train.token_budget in the configs)")
    inits = {c.train.init for c in cfgs.values()}
    if len(inits) > 1:
        problems.append(f"train.init: configs start from different checkpoints {sorted(inits)}; "
                        "a fair comparison needs one (use --set train.init=DIR)")
    if seeds < 1:
        problems.append(f"--seeds: got {seeds}, expected >= 1")
    if problems:
        raise ConfigError(problems, "comparison")


DEMO_CONFIGS = ("grpo", "ibtpo")
DEMO_OVERRIDES = ("train.token_budget=150000", "train.eval_every=10")


def run_demo(out_dir: str | Path = "runs/demo", overrides: list[str] = (),
             progress: bool = True) -> str:
    """Warm-up (reused if ``{out}/sft`` is complete) -> GRPO vs IB-TPO at equal token budgets."""
    from ibtpo.config import resolve_config_path
    from ibtpo.training.sft import run_sft

    out = Path(out_dir)
    sft_dir = out / "sft"
    if (sft_dir / "ibtpo.json").is_file():
        print(f"== warm-up: reusing {sft_dir}")
    else:
        print(f"== warm-up: supervised training of the tiny model -> {sft_dir}")
        run_sft(load_config(overrides=[f"sft.out_dir={sft_dir}", *overrides]), progress=progress)
    configs = [resolve_config_path(name) for name in DEMO_CONFIGS]
    return run_compare(configs, overrides=[f"train.init={sft_dir}", *DEMO_OVERRIDES, *overrides],
                       seeds=1, out_dir=out, progress=progress)

