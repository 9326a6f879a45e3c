"""Held-out evaluation: greedy pass@1 and sampled avg@k, overall and per number of terms.

- pass@1: mean reward of one greedy completion per problem.
- avg@k: mean reward of `k` completions per problem sampled at `temperature`; sample j of
  problem i draws from the stream key (seed, `eval/sampling`, i, j) (`ibtpo.seeding`), so it
  does not depend on the batch size or on how many problems are evaluated; skipped when k = 0.
- sampled pass@j for j in PASS_KS up to k: the unbiased estimator of Chen et al. (2021) from the
  same k samples, 1 - C(k - c, j) / C(k, j) for a problem with c solved samples, averaged over
  problems. sampled pass@1 equals avg@k for binary rewards; pass@16 needs k >= 16 (1,000
  problems x 16 samples: about 16 times the greedy pass's generation).
- Solved (choice): a sample is solved when its reward, combined over the reward functions
  (exactly: `ibtpo.data.rewards.weighted_mean`) and transformed, is 1 -- every function fully
  satisfied; binary rewards, and reward_transform=threshold, whose reward >=
  [`task.reward_threshold`] is 1. Under reward_transform=rescale a sample is solved when its
  reward on the function's own scale is >= `task.reward_threshold` (`success_level`). None
  counts as unsolved.
- A `None` reward (the problem cannot be scored) counts as 0 and is counted in `unscorable`
  (problems whose greedy completion could not be scored).
- `by_terms` groups problems by `Problem.n_terms` (built-in task); rows without it (n_terms = 0)
  count in the overall figures only.
- Benchmarks (``eval.datasets``, e.g. configs/paper_eval.yaml): `run_benchmarks` evaluates every
  row of each dataset with one model load and prints one table (figures in %), with pass@k (a
  problem solved by any of its k samples) and the unweighted mean over benchmarks.
All generation goes through an engine's `generate` (`ibtpo.rollout.engines.contract`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ibtpo.data import load_task
from ibtpo.data.rewards import task_reward_fn
from ibtpo.inputs import check_prompt_lengths
from ibtpo.metrics import PASS_KS
from ibtpo.models import encode_prompt, load_model, prompt_encoder, read_extra, stop_token_ids
from ibtpo.rollout.engines import build_engine
from ibtpo.rollout.engines.contract import SamplingParams
from ibtpo.rollout.engines.torch import TorchEngine
from ibtpo.seeding import EVAL_SAMPLING, stream_key


def reward_columns(problems, repeat: int = 1) -> dict[str, list]:
    """Reward-function columns (one list per key, `repeat` entries per problem)."""
    keys = list(dict.fromkeys(k for p in problems for k in p.columns()))
    return {k: [p.columns().get(k) for p in problems for _ in range(repeat)] for k in keys}


def decode_completion(tokenizer, token_ids: list[int]) -> str:
    """The text of generated tokens, without special tokens (the final EOS)."""
    return tokenizer.decode(token_ids, skip_special_tokens=True)


def generate_and_score(engine, tokenizer, problems, prompt_ids: list[list[int]], reward_fn,
                       repeat: int, max_new_tokens: int, sampling: SamplingParams,
                       seed: int | None = None) -> tuple[list, list]:
    """`repeat` completions per problem (problem-major order) from its encoded prompt
    `prompt_ids[i]`: (rewards, samples). Sampled completions need `seed` (module docstring)."""
    prefixes = [ids for ids in prompt_ids for _ in range(repeat)]
    keys = (None if seed is None else
            [stream_key(seed, EVAL_SAMPLING, i, j) for i in range(len(prompt_ids))
             for j in range(repeat)])
    samples = engine.generate(prefixes, max_new_tokens, sampling, keys)
    completions = [decode_completion(tokenizer, s.token_ids) for s in samples]
    prompts = [p.prompt for p in problems for _ in range(repeat)]
    rewards = reward_fn(prompts, completions, **reward_columns(problems, repeat))
    return rewards, samples


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are solved (Chen et al., 2021):
    1 - C(n - c, k) / C(n, k); 1 when fewer than k samples fail."""
    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"pass_at_k: expected 0 < k <= n and 0 <= c <= n, got n={n}, c={c}, "
                         f"k={k}")
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def success_level(reward_fn) -> float:
    """The reward at and above which a sample is solved: its transform's `success_level` (1.0,
    or `task.reward_threshold` rescaled under reward_transform=rescale); 1.0 for a plain
    function."""
    return getattr(getattr(reward_fn, "transform", None), "success_level", 1.0)


def solved_counts(rewards: list, k: int, level: float = 1.0) -> list[int]:
    """Solved samples of each problem (k per problem, problem-major): reward >= `level`; None
    counts as unsolved."""
    return [sum(r is not None and r >= level for r in rewards[i:i + k])
            for i in range(0, len(rewards), k)]


def sampled_pass_at(rewards: list, k: int, level: float = 1.0) -> dict[str, float]:
    """{"sampled_pass@j": mean over problems} for j in PASS_KS up to k, from `rewards` holding k
    samples per problem (problem-major); solved means reward >= `level` (`success_level`)."""
    solved = solved_counts(rewards, k, level)
    return {f"sampled_pass@{j}": sum(pass_at_k(k, c, j) for c in solved) / len(solved)
            for j in PASS_KS if j <= k}


def mean_reward(rewards: list) -> float:
    """Mean of rewards with None counted as 0 (0.0 for an empty list)."""
    return sum(r or 0.0 for r in rewards) / len(rewards) if rewards else 0.0


def group_figures(problems, greedy: list, sampled: list | None, k: int) -> dict:
    """pass@1 (and avg@k) of each group of problems with the same n_terms > 0."""
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(problems):
        if p.n_terms > 0:
            groups.setdefault(p.n_terms, []).append(i)
    out = {}
    for n, idx in sorted(groups.items()):
        out[n] = {"pass@1": mean_reward([greedy[i] for i in idx]), "count": len(idx)}
        if sampled is not None:
            out[n][f"avg@{k}"] = mean_reward([sampled[i * k + j] for i in idx for j in range(k)])
    return out


def evaluate(model, tokenizer, problems, reward_fn, *, k: int = 4, temperature: float = 1.0,
             max_new_tokens: int = 64, batch_size: int = 256, seed: int = 0,
             encode=None, top_p: float = 1.0, top_k: int = 0, engine=None) -> dict:
    """Greedy pass@1 and sampled avg@k of `model` on `problems` (see the module docstring).

    `encode(text) -> ids` builds the prompts (e.g. `ibtpo.models.prompt_encoder` with the chat
    template); generation stops at every stop id of the tokenizer and model. The avg@k samples
    are drawn at `temperature`, `top_p` and `top_k`. `engine`: the engine to generate with (any
    backend over `model`, `ibtpo.rollout.engines.build_engine`); None = the torch engine.

    Returns {"pass@1", "avg@k" and "sampled_pass@j" (when k > 0),
    "by_terms": {n: {"pass@1", "avg@k", "count"}},
    "unscorable", "count", "truncated" (share of greedy completions that hit the length limit),
    "mean_tokens" (mean greedy completion length), and "solved" (when k > 0: solved samples of
    each problem, for pass@k and paired comparisons)}.
    """
    if not problems:
        raise ValueError("evaluate: expected at least one problem, got none")
    if engine is None:
        engine = TorchEngine(model, stop_token_ids(tokenizer, model), tokenizer.pad_token_id,
                             batch_size=batch_size)
    encode = encode or (lambda text: encode_prompt(tokenizer, text))
    prompt_ids = [encode(p.prompt) for p in problems]  # once, for the greedy and sampled passes
    greedy, samples = generate_and_score(engine, tokenizer, problems, prompt_ids, reward_fn, 1,
                                         max_new_tokens, SamplingParams(temperature=0.0))
    sampled = None
    if k > 0:
        sampled, _ = generate_and_score(engine, tokenizer, problems, prompt_ids, reward_fn, k,
                                        max_new_tokens, SamplingParams(temperature=temperature,
                                                                       top_p=top_p, top_k=top_k),
                                        seed)
    result = {"pass@1": mean_reward(greedy), "count": len(problems),
              "by_terms": group_figures(problems, greedy, sampled, k),
              "unscorable": sum(r is None for r in greedy),
              "truncated": sum(s.stop_reason == "length" for s in samples) / len(samples),
              "mean_tokens": sum(len(s.token_ids) for s in samples) / len(samples)}
    if sampled is not None:
        level = success_level(reward_fn)
        result[f"avg@{k}"] = mean_reward(sampled)
        result.update(sampled_pass_at(sampled, k, level))
        result["solved"] = solved_counts(sampled, k, level)
    return result


def held_out(task, size: int) -> list:
    """The first `size` held-out problems of `task` (at most its task.eval_size)."""
    problems = task.eval_set()
    if size > len(problems):
        print(f"note: eval.size={size} but the task holds out {len(problems)} problems "
              f"(task.eval_size); evaluating on {len(problems)}")
    return problems[:size]


def task_mismatch(cfg, model_dir: str) -> list[str]:
    """Task settings that differ between `cfg` and the checkpoint's ibtpo.json."""
    saved = read_extra(model_dir).get("task") if Path(model_dir).is_dir() else None
    if not isinstance(saved, dict):
        return []
    current = cfg.to_dict()["task"]
    return [f"task.{k}: checkpoint {saved[k]!r}, config {current.get(k)!r}"
            for k in saved if current.get(k) != saved[k]]


def format_table(result: dict, k: int, title: str):
    """A rich Table of pass@1 / avg@k per number of terms and overall."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("terms", "count", "pass@1") + ((f"avg@{k}",) if f"avg@{k}" in result else ()):
        table.add_column(col, justify="right")
    rows = [(str(n), fig) for n, fig in result["by_terms"].items()] + [("all", result)]
    for name, fig in rows:
        cells = [name, str(fig["count"]), f"{fig['pass@1']:.3f}"]
        if f"avg@{k}" in fig:
            cells.append(f"{fig[f'avg@{k}']:.3f}")
        table.add_row(*cells)
    return table


def run_eval(cfg, model_dir: str, out_json: str | None = None) -> dict:
    """Evaluate a checkpoint (or preset) on cfg.eval.size held-out problems, or on every
    benchmark of ``eval.datasets`` (`run_benchmarks`); print, write JSON."""
    from rich.console import Console

    if cfg.eval.datasets:
        return run_benchmarks(cfg, model_dir, out_json)
    for line in task_mismatch(cfg, model_dir):
        print(f"warning: {line}")
    model, tokenizer = load_model(model_dir, cfg.model.device, cfg.model.dtype,
                                  trust_remote_code=cfg.model.trust_remote_code)
    encode = prompt_encoder(tokenizer, cfg.model.chat_template, cfg.model.system_prompt)
    problems = held_out(load_task(cfg.task), cfg.eval.size)
    check_prompt_lengths(problems, encode, model, cfg.sampling.max_new_tokens,
                         f"task.name={cfg.task.name!r} (held-out)")
    result = evaluate(model, tokenizer, problems,
                      task_reward_fn(cfg.task), k=cfg.eval.k,
                      temperature=cfg.eval.temperature,
                      max_new_tokens=cfg.sampling.max_new_tokens,
                      batch_size=cfg.eval.batch_size, seed=cfg.eval.seed, encode=encode,
                      top_p=cfg.eval.top_p, top_k=cfg.eval.top_k,
                      engine=build_engine(cfg, model, tokenizer))
    result["model"] = str(model_dir)
    Console().print(format_table(result, cfg.eval.k, f"held-out evaluation of {model_dir}"))
    if out_json:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(result, indent=2))
    return result


# --- benchmarks: eval.datasets, one table --------------------------------------------------------
def benchmark_sources(entries: list[str]) -> list[tuple[str, str]]:
    """(name, source) of each ``eval.datasets`` entry 'NAME=SOURCE'; ValueError naming the
    entry otherwise (or a name used twice)."""
    out = []
    for entry in entries:
        name, sep, source = (part.strip() for part in entry.partition("="))
        if not sep or not name or not source:
            raise ValueError(f"eval.datasets: got {entry!r}, expected 'NAME=SOURCE', e.g. "
                             "'math500=hf:HuggingFaceH4/MATH-500:test' or 'aime24=data/a.jsonl'")
        out.append((name, source))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"eval.datasets: names must differ, got {', '.join(names)}")
    return out


def benchmark_figures(result: dict, k: int) -> dict:
    """One benchmark's row: count, greedy pass@1, avg@k, sampled pass@j (j in PASS_KS up to k)
    and pass@k (a problem solved by any of its k samples)."""
    row = {key: result[key] for key in ("count", "pass@1", f"avg@{k}", "unscorable",
                                        "truncated") if key in result}
    row.update({key: v for key, v in result.items() if key.startswith("sampled_pass@")})
    if "solved" in result:
        row[f"pass@{k}"] = sum(c > 0 for c in result["solved"]) / len(result["solved"])
    return row


def run_benchmarks(cfg, model_dir: str, out_json: str | None = None) -> dict:
    """Greedy pass@1, avg@k and pass@k of a checkpoint on every ``eval.datasets`` benchmark (all
    of its rows, at most ``eval.size``), one model load, one table; "mean" is the unweighted mean
    over benchmarks (as papers average them)."""
    from dataclasses import replace

    from rich.console import Console

    from ibtpo.data.loaders import load_problems

    sources = benchmark_sources(cfg.eval.datasets)
    model, tokenizer = load_model(model_dir, cfg.model.device, cfg.model.dtype,
                                  trust_remote_code=cfg.model.trust_remote_code)
    encode = prompt_encoder(tokenizer, cfg.model.chat_template, cfg.model.system_prompt)
    reward_fn = task_reward_fn(cfg.task)
    e = cfg.eval
    engine = build_engine(cfg, model, tokenizer)  # rollout.engine, built once for every benchmark
    rows = {}
    for name, source in sources:
        problems = load_problems(replace(cfg.task, name=source))[: e.size]
        check_prompt_lengths(problems, encode, model, cfg.sampling.max_new_tokens,
                             f"eval.datasets {name}={source}")
        rows[name] = benchmark_figures(evaluate(
            model, tokenizer, problems, reward_fn, k=e.k, temperature=e.temperature,
            max_new_tokens=cfg.sampling.max_new_tokens, batch_size=e.batch_size, seed=e.seed,
            encode=encode, top_p=e.top_p, top_k=e.top_k, engine=engine), e.k)
    result = {"model": str(model_dir), "benchmarks": rows, "mean": mean_row(rows)}
    Console().print(format_benchmark_table(result, f"benchmarks of {model_dir}"))
    if out_json:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(result, indent=2))
    return result


def mean_row(rows: dict) -> dict:
    """Unweighted mean over benchmarks of each figure every benchmark has (count: summed)."""
    keys = [key for key in next(iter(rows.values())) if all(key in r for r in rows.values())]
    out = {key: sum(r[key] for r in rows.values()) / len(rows) for key in keys}
    out["count"] = sum(r["count"] for r in rows.values())
    return out


def format_benchmark_table(result: dict, title: str):
    """A rich Table: one row per benchmark and the mean; columns count, pass@1 (greedy), avg@k,
    pass@k."""
    from rich.table import Table

    figures = [key for key in result["mean"] if key.startswith(("pass@", "avg@"))]
    table = Table(title=title)
    for col in ["benchmark", "count"] + [f"{f} (greedy)" if f == "pass@1" else f
                                         for f in figures]:
        table.add_column(col, justify="right")
    for name, row in [*result["benchmarks"].items(), ("mean", result["mean"])]:
        table.add_row(name, str(int(row["count"])), *[f"{100 * row[f]:.1f}" for f in figures])
    return table
