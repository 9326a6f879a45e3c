"""Fair comparisons: every config trains from the same warm-up checkpoint until the same number of
generated tokens (or, with `steps`, the same number of optimizer steps: equal prompts, as the
paper's epoch), for several seeds; then tables with 95% intervals and plots against generated
tokens.

- Seeds: run i of every config uses `train.seed + i`, so runs are paired by seed: same warm-up,
  same training-prompt stream (`ibtpo.seeding`), same held-out problems and evaluation samples.
- Every figure is a mean over seeds ± the half-width of its 95% Student-t interval; the differences
  to the baseline config (the first one, or `baseline=`) are paired by seed.
- A finished run writes `summary.json` next to its `metrics.jsonl`, with the fingerprints of its
  warm-up and final weights and the kernels it ran on (`ibtpo.models.fingerprint`); a later
  comparison with the same config reuses it instead of training again (`reuse=False` retrains).
- With `record_dir` (the studies: benchmarks/results/runs/, committed) every finished run also
  writes a small record there: its metrics rows (the keys of RECORD_KEYS), resolved config,
  code version (`ibtpo.provenance`), git commit, warm-up digest and fingerprints. A record is
  reused, on any machine, only when its config, its warm-up's weights digest and its code
  version are today's; a stale one is rerun and replaced, never mixed in. A study may pass
  `same_code`: older code versions shown to compute the same numbers as today's
  (`ibtpo.provenance.same_code`, `benchmarks/equivalence.py`); their records count as today's,
  and a config field added since counts as agreeing when today's value is its default.

``ibtpo demo`` = warm-up (reused when present) -> compare GRPO vs IB-TPO -> ``runs/demo/``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import time
from pathlib import Path

from ibtpo.config import Config, ConfigError, load_config, resolve_config_path
from ibtpo.metrics import read_metrics
from ibtpo.models import describe_fingerprint, fingerprint, read_extra
from ibtpo.provenance import code_version, git_commit
from ibtpo.stats import fmt_ci, mean_ci, paired_ci
from ibtpo.training.runlock import LOCK_FILE
from ibtpo.training.shortfall import expected_trajectories
from ibtpo.training.trainer import Trainer, config_with

SUMMARY_FILE = "summary.json"
G_KEY = "rollout/trajectories_per_prompt"
TABLE_COLUMNS = (  # (header, metric, how it is summarised over a run's steps)
    ("G", G_KEY, "mean"),
    ("traj/1k tok", "rollout/trajectories_per_1k_tokens", "mean"),
    ("Eff-Rate", "rollout/eff_rate", "mean"),
    ("Avg-Rate", "rollout/reward_mean", "mean"),
    ("entropy (end)", "policy/entropy", "last"),
    ("IB root", "tree/ib_score_root", "mean"),
    ("cov root", "tree/cov_root", "mean"),
    ("IB branch pts", "tree/ib_score", "mean"),
)
PLOTS = ("eval/pass@1", "eval/avg@k", "eval/sampled_pass@16", "rollout/reward_mean",
         "rollout/eff_rate", "policy/entropy", "tree/ib_score_root", "tree/cov_root",
         "tree/tsallis_root", "tree/ib_score", "loss/clipfrac_high", "loss/ratio_std")
RECORD_KEYS = {"train/step", "train/generated_tokens", "train/skipped", "train/grad_norm",
               "loss/clipfrac_low", "loss/clipfrac_high", "loss/ratio_std", "loss/kl",
               *PLOTS, *(key for _, key, _ in TABLE_COLUMNS)}  # and every eval/ key
SMOOTH_STEPS = 5  # moving average of step metrics in the plots (evaluations are not smoothed)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def summarise_run(rows: list[dict]) -> dict:
    """Final, best and warm-up evaluation, and each table column, from one run's metrics rows.
    "best_*" is the best evaluation after the warm-up's (the warm-up's when there is none)."""
    evals = [r for r in rows if "eval/pass@1" in r]
    steps = [r for r in rows if r.get("train/step", 0) > 0]
    out = {"steps": len(steps),
           "generated_tokens": steps[-1]["train/generated_tokens"] if steps else 0}
    for key in (k for k in evals[-1] if k.startswith("eval/")):
        name = key[len("eval/"):]
        out[name], out[f"init_{name}"] = evals[-1][key], evals[0].get(key)
        out[f"best_{name}"] = max(r.get(key, float("-inf")) for r in evals[1:] or evals)
    for _, key, how in TABLE_COLUMNS:
        values = [r[key] for r in steps if _finite(r.get(key))]
        out[key] = (values[-1] if how == "last" else statistics.fmean(values)) if values else None
    return out


def _values(runs: list[dict], key: str) -> list[float]:
    return [r[key] for r in runs if _finite(r.get(key))]


def _cell(runs: list[dict], key: str, digits: int = 3) -> str:
    return fmt_ci(*mean_ci(_values(runs, key)), digits=digits)


def _diff_cell(runs: list[dict], base: list[dict], key: str) -> str:
    """Paired difference to the baseline in points (x100), over the seeds both have."""
    pairs = [(r[key], b[key]) for r, b in zip(runs, base) if _finite(r.get(key))
             and _finite(b.get(key))]
    if not pairs:
        return "n/a"
    mean, half = paired_ci([a for a, _ in pairs], [b for _, b in pairs])
    sign = "+" if mean >= 0 else ""
    return sign + fmt_ci(mean, half, digits=1, scale=100)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def outcome_keys(results: dict[str, list[dict]]) -> list[tuple[str, str]]:
    """(header, summary key) of the outcome columns: greedy pass@1, avg@k, and the largest
    sampled pass@j every run has."""
    runs = [r for group in results.values() for r in group]
    sampled = [f"sampled_pass@{j}" for j in (64, 32, 16, 8, 4)
               if all(_finite(r.get(f"sampled_pass@{j}")) for r in runs)]
    keys = [("pass@1", "pass@1"), ("avg@k", "avg@k")]
    return keys + [(f"pass@{sampled[0].split('@')[1]} (T>0)", sampled[0])] if sampled else keys


def outcome_table(results: dict[str, list[dict]], baseline: str) -> str:
    """Held-out greedy pass@1, avg@k and sampled pass@k per config, with their paired
    differences to `baseline`."""
    base, keys = results[baseline], outcome_keys(results)
    head = ["config", "seeds"] + [c for h, _ in keys for c in (h, f"Δ {h} vs {baseline} (pt)")]
    head += ["steps", "gen. tokens", "wall s"]
    lines = [_row(head), "|" + "---|" * len(head)]
    for name, runs in results.items():
        cells = [name, str(len(runs))]
        for _, key in keys:
            cells += [_cell(runs, key), "—" if name == baseline else _diff_cell(runs, base, key)]
        lines.append(_row(cells + [_cell(runs, "steps", 0), _cell(runs, "generated_tokens", 0),
                                   _cell(runs, "wall_s", 0)]))
    return "\n".join(lines) + "\n"


def g_cell(runs: list[dict]) -> str:
    """G over seeds: '4.5 [4.0–5.0] of 12' = the mean, the lowest and the highest seed's when
    they differ (a t-interval over two or three seeds of a count runs far past the values it can
    take), and the G its config asks for (`expected_G`, B0 + (L-1)·K·Bn)."""
    values = _values(runs, G_KEY)
    if not values:
        return "n/a"
    cell = f"{statistics.fmean(values):.1f}"
    if min(values) != max(values):
        cell += f" [{min(values):.1f}–{max(values):.1f}]"
    expected = {r.get("expected_G") for r in runs} - {None}
    return cell + (f" of {expected.pop()}" if len(expected) == 1 else "")


G_NOTE = ("G: trajectories per prompt (mean over a run's steps, then over seeds), [the lowest–"
          "highest seed], of the B0 + (L-1)·K·Bn its config asks for; fewer when trees found no "
          "step to branch from or no room left (the run warns at its first such step). Other "
          "columns: mean ± 95% t half-width over seeds.\n")


def rollout_table(results: dict[str, list[dict]]) -> str:
    """Each TABLE_COLUMNS metric (mean over a run's steps, then over seeds) per config; G as
    `g_cell` writes it, explained by the note under the table."""
    head = ["config"] + [h for h, _, _ in TABLE_COLUMNS]
    lines = [_row(head), "|" + "---|" * len(head)]
    for name, runs in results.items():
        lines.append(_row([name] + [g_cell(runs) if key == G_KEY else _cell(runs, key)
                                    for _, key, _ in TABLE_COLUMNS]))
    return "\n".join(lines) + "\n\n" + G_NOTE


def markdown_report(results: dict[str, list[dict]], budget: int, baseline: str,
                    steps: int | None = None) -> str:
    """The comparison as markdown: outcomes, rollout statistics, and how to read them."""
    seeds = sorted({len(r) for r in results.values()})
    runs = [r for group in results.values() for r in group]
    init = _values(runs, "init_pass@1")
    length = (f"{steps} optimizer steps (equal prompts; the tokens each used are in the table)"
              if steps else f"{budget:,} generated tokens")
    return (f"Every run: {length} from the same warm-up checkpoint "
            f"(held-out pass@1 {init[0]:.3f}); seeds per config: "
            f"{', '.join(map(str, seeds))}.\n" + _fingerprint_line(runs) +
            "± is the half-width of the 95% Student-t interval over seeds; Δ are per-seed paired "
            "differences (same prompts, same evaluation) in percentage points.\n\n"
            + outcome_table(results, baseline) + "\n" + rollout_table(results))


def _fingerprint_line(runs: list[dict]) -> str:
    """The warm-up's fingerprint (weights digest and kernels), so a reader sees whether a rerun
    started from the same model; runs written before fingerprints existed say so."""
    prints = {describe_fingerprint(r["init_fingerprint"]) for r in runs if "init_fingerprint" in r}
    if not prints:
        return "Warm-up fingerprint: not recorded (runs from before fingerprints existed).\n"
    return f"Warm-up fingerprint: {'; '.join(sorted(prints))}.\n"


# ----------------------------------------------------------------------------- plots


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(generated tokens, value) of one run; step metrics smoothed over SMOOTH_STEPS steps."""
    pts = [(r.get("train/generated_tokens", 0), r[key]) for r in rows if _finite(r.get(key))]
    if not pts or key.startswith("eval/"):
        return [x for x, _ in pts], [y for _, y in pts]
    xs, ys = zip(*pts)
    w = SMOOTH_STEPS
    smooth = [statistics.fmean(ys[max(0, i - w + 1):i + 1]) for i in range(len(ys))]
    return list(xs), smooth


def band(runs_rows: list[list[dict]], key: str, grid) -> tuple:
    """Mean and 95% t-interval half-width over seeds of `key` interpolated on `grid`, NaN where
    any seed has no value (so a curve never ends on a mean over fewer seeds than the rest), and
    the band clipped to the metric's range (`metric_range`)."""
    import numpy as np

    curves = []
    for rows in runs_rows:
        xs, ys = _series(rows, key)
        if len(xs) >= 1:
            curves.append(np.where((grid >= xs[0]) & (grid <= xs[-1]),
                                   np.interp(grid, xs, ys), np.nan))
    if not curves:
        return None, None
    stack = np.array(curves)  # (seeds, grid)
    stats = [mean_ci(col) if not np.isnan(col).any() else (math.nan, math.nan)
             for col in stack.T]
    mean, half = np.array([m for m, _ in stats]), np.array([h for _, h in stats])
    low, high = metric_range(key)
    return mean, np.minimum(np.nan_to_num(half), np.minimum(mean - low, high - mean))


def metric_range(key: str) -> tuple[float, float]:
    """The values a metric can take: [0, 1] for shares and rates (evaluations, Eff-Rate, mean
    reward, clip fractions), [0, inf) for entropies, unbounded otherwise."""
    if key.startswith("eval/") or key in ("rollout/eff_rate", "rollout/reward_mean") or \
            key.startswith("loss/clipfrac"):
        return 0.0, 1.0
    return (0.0, math.inf) if "entropy" in key else (-math.inf, math.inf)


def plot_curves(run_rows: dict[str, list[list[dict]]], path: Path, keys=PLOTS) -> None:
    """One panel per metric, x = generated tokens; per config the mean over seeds and its 95%
    band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    top = max((r.get("train/generated_tokens", 0) for runs in run_rows.values() for rows in runs
               for r in rows), default=1)
    grid = np.linspace(0, top, 80)
    keys = [k for k in keys if any(_series(rows, k)[0] for runs in run_rows.values()
                                   for rows in runs)]  # no panel without data
    if not keys:
        return
    cols = min(3, len(keys))
    fig, axes = plt.subplots(math.ceil(len(keys) / cols), cols, squeeze=False,
                             figsize=(5 * cols, 3.6 * math.ceil(len(keys) / cols)))
    for ax, key in zip(axes.flat, keys):
        for i, (name, runs) in enumerate(run_rows.items()):
            mean, half = band(runs, key, grid)
            if mean is None:
                continue
            ax.plot(grid, mean, color=f"C{i}", label=f"{name} (n={len(runs)})")
            ax.fill_between(grid, mean - half, mean + half, color=f"C{i}", alpha=0.2)
        ax.set_title(key)
        ax.set_xlabel("generated tokens")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ----------------------------------------------------------------------------- running


def _fresh_run_dir(path: Path) -> None:
    """Clear a previous (unfinished) run's files; refuse a non-empty directory of other files."""
    if not path.exists():
        return
    names = {p.name for p in path.iterdir()}
    if names - {"metrics.jsonl", "tb", "checkpoint", "checkpoints", SUMMARY_FILE,
                LOCK_FILE} and not names & {
            "metrics.jsonl", SUMMARY_FILE}:
        raise ConfigError([f"train.out_dir: {path} holds files that are not an ibtpo run; "
                           "choose another --out"], "comparison")
    shutil.rmtree(path)


def init_eval_key(cfg) -> str:
    """What the held-out evaluation of `train.init` depends on: runs that agree on it start from
    the same figures, so it is computed once per comparison."""
    d = cfg.to_dict()
    return json.dumps([cfg.train.init, d["task"], d["eval"], d["model"],
                       cfg.sampling.max_new_tokens], sort_keys=True)


def _portable_config(cfg) -> dict:
    """The resolved config without the machine's paths (train.init, train.out_dir): a record's
    warm-up is identified by its weights digest instead."""
    d = cfg.to_dict()
    d["train"] = {k: v for k, v in d["train"].items() if k not in ("init", "out_dir")}
    return d


def init_digest(init: str) -> str | None:
    """The weights digest a warm-up checkpoint recorded (`ibtpo sft`), or None."""
    try:
        extra = read_extra(init) if Path(init).is_dir() else {}
    except (OSError, ValueError):
        return None
    return ((extra.get("final_eval") or {}).get("fingerprint") or {}).get("weights")


def _round(v):
    return float(f"{v:.6g}") if isinstance(v, float) else v


def write_record(path: Path, cfg, summary: dict, rows: list[dict]) -> None:
    """A run's committed record (see the module docstring), written atomically."""
    keep = [{k: _round(v) for k, v in r.items() if k in RECORD_KEYS or k.startswith("eval/")}
            for r in rows]
    record = {"config": _portable_config(cfg), "code_version": code_version(),
              "git_commit": git_commit(), "init_weights": init_digest(cfg.train.init),
              **{k: summary[k] for k in ("wall_s", "init_fingerprint", "fingerprint")},
              "rows": keep}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, separators=(",", ":")) + "\n")
    os.replace(tmp, path)


def same_config(recorded: dict, today: dict) -> bool:
    """Is a recorded (portable) config today's? Every field must agree; a field the record does
    not have (added to the code since) agrees when today's value is its default."""
    default = _portable_config(Config())
    if set(recorded) - set(today):
        return False
    for section, fields in today.items():
        rec = recorded.get(section, {})
        if set(rec) - set(fields):
            return False
        if any((rec[k] if k in rec else default[section][k]) != v for k, v in fields.items()):
            return False
    return True


def reusable_record(path: Path | None, cfg, same_code: frozenset[str] = frozenset()
                    ) -> dict | None:
    """The record at `path` when it holds this config's run from today's code (or a version in
    `same_code`) and warm-up; None (with a line saying why) otherwise."""
    if path is None or not path.is_file():
        return None
    record = json.loads(path.read_text())
    versions = {code_version(), *same_code}
    why = [what for what, same in (
        ("config", same_config(record.get("config", {}), _portable_config(cfg))),
        (f"code version {record.get('code_version')} (now {code_version()})",
         record.get("code_version") in versions),
        ("warm-up weights", record.get("init_weights") == init_digest(cfg.train.init)))
        if not same]
    if why:
        print(f"   the record {path} is stale ({', '.join(why)} differ): running again")
        return None
    return record


def run_one(cfg, progress: bool = True, reuse: bool = True, init_cache: dict | None = None,
            record: Path | None = None, same_code: frozenset[str] = frozenset()
            ) -> tuple[dict, list[dict]]:
    """Train one config (or reuse its finished run, or its committed `record`); return
    (summary, metrics rows)."""
    out = Path(cfg.train.out_dir)
    summary_path = out / SUMMARY_FILE
    found = reusable_record(record, cfg, same_code) if reuse else None
    if found is not None:
        print(f"   reusing the committed run {record}")
        return {**summarise_run(found["rows"]), **{k: found[k] for k in (
            "wall_s", "init_fingerprint", "fingerprint")}}, found["rows"]
    if reuse and summary_path.is_file() and record is None:
        summary = json.loads(summary_path.read_text())
        if summary.get("config") == cfg.to_dict():
            print(f"   reusing the finished run in {out}")
            return summary, read_metrics(out / "metrics.jsonl")
    _fresh_run_dir(out)
    start = time.perf_counter()
    trainer = Trainer(cfg, progress=progress)
    if init_cache is not None:
        key = init_eval_key(cfg)
        if key not in init_cache:
            t0 = time.perf_counter()
            init_cache[key] = trainer.evaluate()
            start += time.perf_counter() - t0  # the shared warm-up evaluation is not this run's
        trainer.init_eval = init_cache[key]
    trainer.train()
    if trainer.stop.signum is not None:  # SIGINT / SIGTERM: an unfinished run is never reused
        print(f"   stopped by signal {trainer.stop.signum} at step {trainer.step}: {out} is "
              "not a finished run (no summary, no record)")
        raise SystemExit(128 + trainer.stop.signum)
    rows = read_metrics(out / "metrics.jsonl")
    summary = {**summarise_run(rows), "wall_s": time.perf_counter() - start,
               "init_fingerprint": trainer.init_fingerprint,
               "fingerprint": fingerprint(trainer.model, trainer.dist.full_state_dict(
                   trainer.model)), "config": cfg.to_dict()}
    tmp = summary_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, summary_path)
    if record is not None:
        write_record(record, cfg, summary, rows)
    return summary, rows


def run_compare(configs: list[Path], *, overrides: list[str] = (), seeds: int | dict = 1,
                out_dir: str | Path = "runs/compare", token_budget: int | None = None,
                steps: int | None = None, progress: bool = True, baseline: str | None = None,
                reuse: bool = True, title: str | None = None,
                record_dir: str | Path | None = None, same_code: frozenset[str] = frozenset()
                ) -> tuple[str, dict, dict]:
    """Train every config for `seeds` seeds (a number, or {config name: number}) at one token
    budget, or for `steps` optimizer steps each when given; write compare.md / .json / .png.
    `record_dir`: committed run records, `same_code`: older code versions whose records count
    (module docstring). Returns (markdown report, results, metrics rows)."""
    out = Path(out_dir)
    cfgs = {Path(c).stem: load_config([c], list(overrides)) for c in configs}
    budget = 0 if steps else token_budget or max(c.train.token_budget for c in cfgs.values())
    baseline = baseline or next(iter(cfgs))
    n_seeds = seeds if isinstance(seeds, dict) else dict.fromkeys(cfgs, seeds)
    _check_comparable(cfgs, budget, n_seeds, baseline, steps)
    length = {"token_budget": budget, **({"steps": steps} if steps else {})}
    goal = f"{steps} optimizer steps" if steps else f"{budget:,} generated tokens"
    results, curves, init_cache = {}, {}, {}
    for name, cfg in cfgs.items():
        results[name], curves[name] = [], []
        for seed in range(n_seeds[name]):
            run_dir = out / name / f"seed{seed}"
            run_cfg = config_with(cfg, train={"seed": cfg.train.seed + seed, **length,
                                              "out_dir": str(run_dir)})
            print(f"== {name} seed {seed}: training for {goal} -> {run_dir}")
            record = Path(record_dir) / name / f"seed{seed}.json" if record_dir else None
            summary, rows = run_one(run_cfg, progress, reuse, init_cache, record, same_code)
            results[name].append({**{k: v for k, v in summary.items() if k != "config"},
                                  "expected_G": expected_trajectories(run_cfg)})
            curves[name].append(rows)
    report = markdown_report(results, budget, baseline, steps)
    out.mkdir(parents=True, exist_ok=True)
    heading = title or f"Comparison at {goal} per run"
    (out / "compare.md").write_text(f"# {heading}\n\n{report}")
    (out / "compare.json").write_text(json.dumps(results, indent=2))
    plot_curves(curves, out / "compare.png")
    print(report + f"\nwrote {out / 'compare.md'}, {out / 'compare.json'}, {out / 'compare.png'}")
    return report, results, curves


def _check_comparable(cfgs: dict, budget: int, seeds: dict, baseline: str,
                      steps: int | None = None) -> None:
    problems = []
    if budget <= 0 and not steps:
        problems.append("train.token_budget: a comparison needs a generated-token budget "
                        "(pass --token-budget N or set train.token_budget in the configs) or a "
                        "number of optimizer steps (--steps N)")
    if steps is not None and steps < 1:
        problems.append(f"--steps: got {steps}, expected an integer >= 1")
    kernel_modes = {c.model.kernels for c in cfgs.values()}
    if len(kernel_modes) > 1:
        problems.append(f"model.kernels: configs use different kernels {sorted(kernel_modes)}; "
                        "a comparison runs in one process on one (use --set model.kernels=...)")
    inits = {c.train.init for c in cfgs.values()}
    if len(inits) > 1:
        problems.append(f"train.init: configs start from different checkpoints {sorted(inits)}; "
                        "a fair comparison needs one (use --set train.init=DIR)")
    for name in cfgs:
        if seeds.get(name, 0) < 1:
            problems.append(f"--seeds: got {seeds.get(name, 0)} for {name}, expected >= 1")
    if baseline not in cfgs:
        problems.append(f"--baseline: got {baseline!r}, expected one of {', '.join(cfgs)}")
    if problems:
        raise ConfigError(problems, "comparison")


DEMO_CONFIGS = ("grpo", "ibtpo")
DEMO_SEEDS = 3
DEMO_OVERRIDES = ("train.eval_every=0", "train.tensorboard=false")
# `ibtpo demo --task NAME`: (warm-up settings, which its runs share too; the runs' own settings).
# The Countdown demo is a short version of Study 5 (benchmarks/countdown_study.py): its warm-up,
# its cell (the default lr, on-policy) and horizon, 3 seeds instead of 8, no evaluation midway.
DEMO_TASKS = {
    "arithmetic": ((), ("train.token_budget=100000",)),
    "countdown": (("task.name=countdown", "sft.stop_at_accuracy=0.2"),
                  ("train.token_budget=1000000", "eval.k=64", "eval.size=500",
                   "task.eval_size=500")),
}


def run_demo(out_dir: str | Path = "runs/demo", overrides: list[str] = (),
             progress: bool = True, task: str = "arithmetic") -> str:
    """Warm-up (reused if ``{out}/sft`` is a complete warm-up of the same task) -> GRPO vs IB-TPO
    at equal token budgets, DEMO_SEEDS seeds each, evaluated on the held-out set before and
    after (a short version of benchmarks/methods.py, or of countdown_study.py with
    task='countdown'; their full runs are in BENCHMARKS.md)."""
    from ibtpo.training.sft import run_sft

    if task not in DEMO_TASKS:
        raise ConfigError([f"--task: got {task!r}, expected one of {', '.join(DEMO_TASKS)}"],
                          "demo")
    warm, runs = DEMO_TASKS[task]
    out = Path(out_dir)
    sft_dir = out / "sft"
    sft_cfg = load_config(overrides=[f"sft.out_dir={sft_dir}", *warm, *overrides])
    if (sft_dir / "ibtpo.json").is_file():
        made = read_extra(sft_dir).get("task", {}).get("name")
        if made != sft_cfg.task.name:
            raise ConfigError([f"--out: {sft_dir} holds a warm-up of task {made!r}, expected "
                               f"{sft_cfg.task.name!r}: give the {task} demo its own --out"],
                              "demo")
        print(f"== warm-up: reusing {sft_dir}")
    else:
        print(f"== warm-up: supervised training of the default model on {task} -> {sft_dir}")
        run_sft(sft_cfg, progress=progress)
    configs = [resolve_config_path(name) for name in DEMO_CONFIGS]
    report, _, _ = run_compare(configs, overrides=[f"train.init={sft_dir}", *warm, *runs,
                                                   *DEMO_OVERRIDES, *overrides],
                               seeds=DEMO_SEEDS, out_dir=out, progress=progress)
    return report
