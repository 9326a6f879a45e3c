"""``ibtpo score``: the IB-Score diagnostics (ALGORITHM.md §2) of any policy on any dataset.

Grows IBTrees (``rollout.*``; by default the IB scorer with (4, 9, 1, 1)) on ``eval.size``
held-out prompts, ``train.prompts_per_step`` at a time, and reports the tree metrics of all of
them together: Eff-Rate, Avg-Rate, IB-Score over branch candidates and at the root, ``cov``,
``tsallis``, trajectories per 1k generated tokens. No parameter is updated.

``ibtpo score --rollouts FILE`` reads the rollouts of any framework instead (TRL, verl,
OpenRLHF: one JSON object per completion, `check_rollout`), builds one tree per (step, prompt
id): the group's completions as chains under the root, cut into steps at
``rollout.step_delimiter``, and writes the dynamics of the paper's Figs. 3 and 5 per step
(Eff-Rate, Avg-Rate, root IB-Score, cov(eta1, eta2), Tsallis entropy: `DYNAMICS`) as a table,
JSON and a plot. pi_bar needs per-token log-probs under the sampling policy: a file whose rows all
carry `tokens` and `logprobs` is used as it is; otherwise ``--model`` recomputes them for every
row (one policy's log-probs throughout) from `prompt` + `completion` at
``sampling.temperature``, the prompt encoded as ``model.chat_template`` says.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ibtpo.config import Config
from ibtpo.core.tree import Tree, attach_response, new_tree
from ibtpo.data import load_task
from ibtpo.metrics import tree_metrics
from ibtpo.progress import progress_bar
from ibtpo.rollout.policy import Policy
from ibtpo.seeding import SAMPLING, stream_key


def run_score(cfg: Config, model_path: str, out_json: str | None = None,
              progress: bool = True) -> dict:
    policy = Policy(cfg, model_path)
    problems = load_task(cfg.task).eval_set()[: cfg.eval.size]
    policy.check_prompts(problems, cfg.sampling.max_new_tokens,
                         f"task.name={cfg.task.name!r} (held-out)")
    chunk, trees, generated = cfg.train.prompts_per_step, [], 0
    with progress_bar(progress, len(problems), unit="prompts", description="scoring") as bar:
        for i in range(0, len(problems), chunk):
            keys = [stream_key(cfg.train.seed, SAMPLING, "score", j)
                    for j in range(i, min(i + chunk, len(problems)))]
            new, m = policy.grow_trees(cfg, problems[i:i + chunk], keys)
            trees += new
            generated += int(m["rollout/generated_tokens"])
            bar.update(len(trees))
    result = {"model": str(model_path), "prompts": len(trees), "generated_tokens": generated,
              **tree_metrics(trees, cfg.advantage.beta, cfg.rollout.prob_norm)}
    if out_json:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(result, indent=2))
    return result


# --- rollouts of any framework (ALGORITHM.md §2, the paper's Figs. 3 and 5) ----------------------
DYNAMICS = {"eff_rate": "rollout/eff_rate", "avg_rate": "rollout/reward_mean",
            "ib_score_root": "tree/ib_score_root", "cov_root": "tree/cov_root",
            "tsallis_root": "tree/tsallis_root"}


@dataclass
class Completion:
    """One sampled response of a group: its tokens, their log-probs under the sampling policy,
    its reward in [0, 1] (None = unscorable) and why it stopped ('eos' or 'length')."""

    token_ids: list[int]
    logprobs: list[float]
    reward: float | None
    stop_reason: str = "eos"


def group_tree(completions: list[Completion], decode, delimiter: str = "\n\n",
               prompt_ids=()) -> Tree:
    """The rollout tree of one GRPO group: the root with one chain per completion, each cut into
    steps at `delimiter` (ALGORITHM.md §1); the root's children are the first steps."""
    tree = new_tree(list(prompt_ids))
    for c in completions:
        leaf = attach_response(tree, tree.root, c.token_ids, c.logprobs, [0.0] * len(c.token_ids),
                               c.stop_reason, decode, delimiter)
        leaf.reward = c.reward
    return tree


def group_metrics(trees: list[Tree], beta: float, prob_norm: str = "mean") -> dict:
    """The dynamics figures of a step's groups (`DYNAMICS`: Eff-Rate, Avg-Rate, root IB-Score,
    cov(eta1, eta2) and Tsallis entropy), from `ibtpo.metrics.tree_metrics`."""
    m = tree_metrics(trees, beta, prob_norm)
    return {"prompts": len(trees), **{name: m[key] for name, key in DYNAMICS.items()}}


class TokenTable:
    """Token texts <-> ids for rollouts given as token strings: `decode(ids)` joins the texts."""

    def __init__(self):
        self.ids: dict[str, int] = {}
        self.texts: list[str] = []

    def encode(self, tokens: list[str]) -> list[int]:
        out = []
        for t in tokens:
            if t not in self.ids:
                self.ids[t] = len(self.texts)
                self.texts.append(str(t))
            out.append(self.ids[t])
        return out

    def decode(self, ids: list[int]) -> str:
        return "".join(self.texts[i] for i in ids)


def read_rollouts(path: str | Path) -> list[dict]:
    """Rows of a rollouts JSONL (see `check_rollout`); ValueError naming the file and line."""
    rows = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
        rows.append(check_rollout(row, f"{path}:{lineno}"))
    if not rows:
        raise ValueError(f"{path}: no rollouts; expected one JSON object per completion")
    return rows


def check_rollout(row, where: str) -> dict:
    """One rollout row: `prompt_id` (groups), `completion` (text), `reward` (a number in [0, 1]
    or null), optional `step` (integer, default 0), `prompt` (text, for --model), `tokens` and
    `logprobs` (the completion's token texts and their log-probs, equal lengths)."""
    if (not isinstance(row, dict) or "prompt_id" not in row or "reward" not in row
            or not isinstance(row.get("completion"), str)):
        raise ValueError(f"{where}: expected an object with prompt_id, completion, reward "
                         "(optional: step, prompt, tokens, logprobs)")
    r = row["reward"]
    if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float))
                          or not 0.0 <= r <= 1.0):
        raise ValueError(f"{where}: reward: got {r!r}, expected a number in [0, 1] or null")
    if not isinstance(row.get("step", 0), int):
        raise ValueError(f"{where}: step: got {row['step']!r}, expected an integer")
    tokens, logprobs = row.get("tokens"), row.get("logprobs")
    if (tokens is None) != (logprobs is None) or (tokens is not None
                                                  and len(tokens) != len(logprobs)):
        raise ValueError(f"{where}: tokens and logprobs: expected both (equal lengths) or "
                         "neither")
    return row


def table_completions(rows: list[dict]) -> tuple[list[Completion], object]:
    """Completions of rows that carry `tokens` and `logprobs`, and their decode function."""
    table = TokenTable()
    return [Completion(table.encode(r["tokens"]), [float(x) for x in r["logprobs"]],
                       r["reward"], r.get("stop_reason", "eos")) for r in rows], table.decode


def model_completions(rows: list[dict], cfg: Config, model_path: str, where: str):
    """Completions of `rows` with log-probs recomputed by the model at `model_path` (the prompt
    encoded as ``model.chat_template`` says, the completion without special tokens)."""
    import torch

    from ibtpo.models import load_model, prompt_encoder
    from ibtpo.training.logprobs import sequence_logprobs

    model, tok = load_model(model_path, cfg.model.device, cfg.model.dtype,
                            trust_remote_code=cfg.model.trust_remote_code)
    encode = prompt_encoder(tok, cfg.model.chat_template, cfg.model.system_prompt)
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r.get("prompt"), str) or not isinstance(r.get("completion"), str):
            raise ValueError(f"{where}: row {i + 1}: --model needs the prompt and completion texts")
        prompt = encode(r["prompt"])
        ids = tok(r["completion"], add_special_tokens=False)["input_ids"]
        seq = torch.tensor([prompt + ids], device=model.device)  # (1, T)
        with torch.no_grad():
            logp, _ = sequence_logprobs(model, seq, torch.ones_like(seq), cfg.sampling.temperature,
                                        entropy=None)
        out.append(Completion(ids, logp[0, len(prompt):].tolist(), r["reward"],
                              r.get("stop_reason", "eos")))
    return out, lambda ids: tok.decode(ids, skip_special_tokens=True)


def rollout_dynamics(rows: list[dict], cfg: Config, model_path: str | None = None,
                     where: str = "rollouts") -> list[dict]:
    """One row of `group_metrics` per training step of `rows` (see the module docstring)."""
    if all(r.get("logprobs") is not None for r in rows):
        completions, decode = table_completions(rows)
    elif model_path:
        completions, decode = model_completions(rows, cfg, model_path, where)
    else:
        raise ValueError(f"{where}: some rows have no tokens/logprobs; pass --model to recompute "
                         "the log-probs of every row with that policy")
    groups: dict = {}
    for r, c in zip(rows, completions):
        groups.setdefault(r.get("step", 0), {}).setdefault(str(r["prompt_id"]), []).append(c)
    return [{"step": step, **group_metrics(
        [group_tree(g, decode, cfg.rollout.step_delimiter) for g in by_prompt.values()],
        cfg.advantage.beta, cfg.rollout.prob_norm)} for step, by_prompt in sorted(groups.items())]


def dynamics_figure(table: list[dict]):
    """The paper's Figs. 3/5 panels against the step: root IB-Score, cov, Tsallis, Eff-Rate;
    ticks only at whole steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = ["ib_score_root", "cov_root", "tsallis_root", "eff_rate"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    steps = [row["step"] for row in table]
    for ax, key in zip(axes, panels):
        ax.plot(steps, [row[key] for row in table], marker="o")
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


def plot_dynamics(table: list[dict], path: str | Path) -> None:
    """`dynamics_figure` written to `path` (PNG)."""
    import matplotlib.pyplot as plt

    fig = dynamics_figure(table)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(table) -> None:
    """Print a rich Table at its natural width, at least the terminal's: no header or value is
    cut ("ib_score_ro…"); a terminal narrower than the table wraps its lines instead."""
    from rich.console import Console

    console = Console()
    needed = Console(width=10_000).measure(table).maximum
    (console if needed <= console.width else Console(width=needed)).print(table)


def _cell(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def score_table(result: dict):
    """`run_score`'s figures as a rich Table, one row each (meanings: docs/METRICS.md)."""
    from rich.table import Table

    view = Table(title=f"IB-Score diagnostics of {result.get('model', 'a policy')}",
                 caption="meanings: docs/METRICS.md")
    view.add_column("figure")
    view.add_column("value", justify="right")
    for key, value in result.items():
        if key != "model":
            view.add_row(key, _cell(value))
    return view


def run_score_rollouts(cfg: Config, rollouts: str, model_path: str | None = None,
                       out_json: str | None = None) -> dict:
    """``ibtpo score --rollouts FILE``: print the dynamics table; with `out_json`, write it and
    the plot next to it (same name, .png)."""
    from rich.table import Table

    table = rollout_dynamics(read_rollouts(rollouts), cfg, model_path, str(rollouts))
    view = Table(title=f"IB-Score dynamics of {rollouts}")
    for col in table[0]:
        view.add_column(col, justify="right")
    for row in table:
        view.add_row(*[str(v) if isinstance(v, int) else f"{v:+.4f}" for v in row.values()])
    print_table(view)
    result = {"rollouts": str(rollouts), "model": model_path, "dynamics": table}
    if out_json:
        out = Path(out_json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        plot_dynamics(table, out.with_suffix(".png"))
    return result
