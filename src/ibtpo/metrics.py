"""Metric names, tree metrics of a rollout batch, JSONL/TensorBoard logging (ALGORITHM.md §2, §6).

Shape letters: P trees (prompts) in the batch, G trajectories per tree. Every metric name is
namespaced (`rollout/`, `tree/`, `adv/`, `loss/`, `train/`, `time/`, `eval/`, `policy/`) and listed
with its meaning in `METRIC_DOCS` (the table the README renders).

Choices (config key in brackets):
- Eff-Rate counts a tree as effective when its leaf rewards are not all equal (a tree with one
  trajectory is never effective); rewards None count as 0.0 (ALGORITHM §6).
- IB-Score, cov, tsallis are averaged over the *branch points* of every tree: nodes with >= 2
  distinct children, root included (ALGORITHM §2). A one-child chain node has cov = 0 and r = 1 by
  construction, so including those would measure tree shape, not balance. `*_root` metrics average
  over roots with >= 2 children: the root is the one node every method has with many children
  (GRPO's G samples), so they compare GRPO with the tree methods [`beta`, `prob_norm`]. A batch
  with no such node logs NaN (null in JSONL).
- Depth = number of steps of a trajectory (depth of its leaf). The branching histogram counts the
  distinct children of every non-terminal node (a merged child counts once).
- `rollout/trajectories_per_1k_tokens` is 0.0 when no token was generated.
- `rollout/clipped_ratio` counts a trajectory as cut when its last step stopped at the length
  limit (`stop_reason == "length"`), i.e. without an EOS / end-of-turn token.
- `MetricsLogger` writes one JSON object per `log` call (with "step") to `metrics.jsonl`, which
  it creates (with `tb/`) at its first row, so a run that stops before it logs leaves neither;
  tensors and numpy scalars become floats, NaN/inf become null; TensorBoard gets the numeric
  scalars [`tensorboard`, default True; skipped when torch.utils.tensorboard cannot be
  imported], and
  Weights & Biases when [`wandb_project`] is set (offline by default, [`wandb_mode`]).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter

import numpy as np

from ibtpo.core.ib_score import batch_ib_scores
from ibtpo.core.tree import Tree, leaf_reward

PASS_KS = (1, 2, 4, 8, 16, 32, 64)  # the sampled pass@j an evaluation reports when eval.k >= j
METRIC_DOCS: dict[str, str] = {
    "rollout/prompts": "number of prompts (trees) in the rollout batch",
    "rollout/reward_mean": "Avg-Rate: mean reward of all sampled trajectories (None counted as 0)",
    "rollout/eff_rate": "Eff-Rate: share of prompts whose trajectories' rewards are not all equal",
    "rollout/trajectories_per_prompt": "mean number of trajectories (leaves) per tree, G (below "
                                       "B0 + (L-1)*K*Bn when trees found no node to branch "
                                       "from: the trainer warns once)",
    "rollout/generated_tokens_per_prompt": "mean generated tokens per tree (no prompt, shared "
                                           "prefixes once)",
    "rollout/trajectories_per_1k_tokens": "trajectories per 1,000 generated tokens "
                                          "(token efficiency)",
    "rollout/response_len_mean": "mean tokens of a full response (shared prefix counted in each)",
    "rollout/clipped_ratio": "share of trajectories cut at sampling.max_new_tokens (stop reason "
                             "'length', no EOS; TRL's completions/clipped_ratio)",
    "rollout/generated_tokens": "tokens generated for this step's trees (prompt and shared "
                                "prefixes excluded)",
    "rollout/unscorable": "trajectories whose reward function returned None (scored as 0)",
    "tree/ib_score": "mean IB-Score over branch points (nodes with >= 2 children, root included)",
    "tree/ib_score_root": "mean IB-Score of the roots (over their children: comparable across "
                          "methods)",
    "tree/cov": "mean Cov(pi_bar, r) over branch points (exploitation term of the IB-Score)",
    "tree/cov_root": "mean Cov(pi_bar, r) of the roots (comparable across methods)",
    "tree/tsallis": "mean Tsallis-2 entropy 1 - mean pi_bar over branch points (exploration)",
    "tree/tsallis_root": "mean Tsallis-2 entropy 1 - mean pi_bar of the roots",
    "tree/branch_points": "mean number of nodes with >= 2 children per tree (root included)",
    "rollout/branch_root_share": "share of the branches (after round 1) sampled from the root",
    "rollout/branch_depth_mean": "mean depth (steps in the prefix) of the node a branch starts "
                                 "from",
    "rollout/branch_prefix_tokens_mean": "mean response tokens in the prefix a branch shares",
    "tree/depth_mean": "mean number of steps per trajectory",
    "tree/depth_max": "largest number of steps of a trajectory in the batch",
    "tree/nodes_per_tree": "mean number of step nodes per tree (root excluded)",
    "tree/branching_mean": "mean number of distinct children of a non-terminal node",
    "tree/depth_hist": "histogram {steps per trajectory: count} (JSONL only)",
    "tree/branching_hist": "histogram {children of a non-terminal node: count} (JSONL only)",
    "adv/mean": "mean step advantage over all steps of all trajectories",
    "adv/std": "std of the step advantages over all steps of all trajectories",
    "adv/zero_var_frac": "share of trees whose rewards are all equal (A_GL = 0 there)",
    "adv/a_gl_abs_mean": "mean |A_GL| over all step nodes (IB-TPO only)",
    "adv/a_ib_mean": "mean A_IB over all step nodes, before lam (IB-TPO only)",
    "loss/pg": "clipped policy-gradient surrogate, aggregated with agg_mode",
    "loss/kl": "k3 KL(pi_theta || pi_ref), aggregated with agg_mode",
    "loss/entropy": "policy token entropy on trained tokens, aggregated with agg_mode",
    "loss/clipfrac": "share of trained tokens where clipping is active (low + high)",
    "loss/clipfrac_low": "share of trained tokens with ratio < 1 - eps_low and A < 0",
    "loss/clipfrac_high": "share of trained tokens with ratio > 1 + eps_high and A > 0",
    "loss/ratio_mean": "mean importance ratio pi_theta / pi_old over trained tokens",
    "loss/ratio_std": "standard deviation of the importance ratio over trained tokens (0 "
                      "on-policy; grows over the mini-batches of train.mini_batches > 1)",
    "loss/total": "loss optimised: pg + beta_kl * kl - entropy_coef * entropy",
    "train/grad_norm": "gradient norm before clipping",
    "train/lr": "learning rate",
    "train/step": "optimizer step",
    "train/generated_tokens": "cumulative generated tokens since the start of training",
    "train/batch_tokens": "token positions one training forward runs through the model this "
                          "step (packed trees or padded rows, padding included)",
    "train/trajectory_tokens": "prompt + response tokens of every trajectory counted separately "
                               "(an unpadded one-row-per-trajectory batch)",
    "time/rollout_s": "seconds spent growing the trees of this step",
    "time/train_s": "seconds spent on the policy update of this step",
    "time/step_s": "seconds for the whole training step",
    "eval/pass@1": "share of held-out problems solved by the greedy response",
    "eval/avg@k": "mean reward over k samples per eval problem",
    **{f"eval/sampled_pass@{j}": f"share of eval problems solved by at least one of {j} samples "
       f"at eval.temperature (unbiased estimate from eval.k >= {j} samples per problem)"
       for j in PASS_KS},
    "policy/entropy": "mean token entropy of the sampled tokens under the sampling policy",
    "sft/loss": "warm-up: mean cross-entropy per response token (prompt excluded)",
    "sft/lr": "warm-up: learning rate",
    "sft/tokens_per_s": "warm-up: trained tokens per second",
    "time/elapsed_s": "warm-up: seconds since the start of training",
    "sft/val_pass@1": "warm-up: greedy accuracy on the validation problems (training distribution)",
    "sft/val_pass@1/terms_N": "warm-up: greedy validation accuracy on problems with N terms",
    "rollout/num_trajectories": "trajectories sampled this step (all trees)",
    "rollout/rounds": "generation rounds run (1 + branching rounds that had a node to branch)",
    "rollout/branches": "continuations sampled in the branching rounds (after round 1)",
    "rollout/joins": "rollout.scheduler=continuous: continuations that joined the batch while "
                     "other rows were decoding (0: no round overlapped another)",
    "rollout/decode_steps": "rollout.scheduler=continuous: batched one-token decode forwards "
                            "this step",
    "rollout/rows_in_flight": "rollout.scheduler=continuous: mean rows per decode forward",
    "rollout/prefix_hits": "rollout.prefix_cache_mb > 0: continuations that started from a "
                           "cached prefix instead of a prefill",
    "rollout/prefix_tokens": "rollout.prefix_cache_mb > 0: prefix positions those continuations "
                             "did not re-encode",
    "rollout/prefix_evicted": "rollout.prefix_cache_mb > 0: cache entries evicted by the byte cap "
                              "(> 0: a larger cap would reuse more)",
    "time/generate_s": "seconds spent in engine.generate this step",
    "time/reward_s": "seconds spent in the reward function this step",
    "rollout/reward_errors": "completions whose reward function raised (scored None; see "
                             "task.reward_errors)",
    "train/skipped": "share of the step's optimizer iterations skipped for a NaN/inf loss or "
                     "gradient",
    "reward/NAME": "mean of reward function NAME over the trajectories it scored (several rewards)",
    "reward/NAME/none": "trajectories reward function NAME returned None for (several rewards)",
}


# ----------------------------------------------------------------------------- tree metrics


def _check_trees(trees: list[Tree]) -> None:
    if len(trees) == 0:
        raise ValueError("trees: expected at least one tree")


def _mean(xs) -> float:
    return float(np.mean(xs)) if len(xs) else 0.0


def rollout_metrics(trees: list[Tree]) -> dict[str, float]:
    """rollout/*: Avg-Rate, Eff-Rate, trajectories and generated tokens per prompt."""
    _check_trees(trees)
    rewards = [[leaf_reward(leaf) for leaf in t.leaves()] for t in trees]
    n_traj = sum(len(r) for r in rewards)
    tokens = sum(t.num_generated_tokens() for t in trees)
    lens = [len(t.response_ids(leaf)) for t in trees for leaf in t.leaves()]
    return {
        "rollout/prompts": float(len(trees)),
        "rollout/reward_mean": _mean([x for r in rewards for x in r]),
        "rollout/eff_rate": _mean([len(r) > 0 and max(r) != min(r) for r in rewards]),
        "rollout/trajectories_per_prompt": n_traj / len(trees),
        "rollout/generated_tokens_per_prompt": tokens / len(trees),
        "rollout/trajectories_per_1k_tokens": 1000.0 * n_traj / tokens if tokens else 0.0,
        "rollout/response_len_mean": _mean(lens),
        "rollout/clipped_ratio": _mean([leaf.stop_reason == "length"
                                        for t in trees for leaf in t.leaves()]),
        "policy/entropy": _mean([e for t in trees for n in t.nodes() for e in n.entropies]),
    }


def ib_metrics(trees: list[Tree], beta: float, prob_norm: str = "mean") -> dict[str, float]:
    """tree/{ib_score,cov,tsallis} over branch points and their *_root means over the roots."""
    scores = batch_ib_scores(trees, beta, prob_norm)
    points = [s for node, s in scores.items() if len(node.children) >= 2]
    roots = [scores[t.root] for t in trees if len(t.root.children) >= 2]
    out = {"tree/branch_points": len(points) / len(trees)}
    for key in ("ib", "cov", "tsallis"):
        name = "ib_score" if key == "ib" else key
        out[f"tree/{name}"] = _mean_or_nan([s[key] for s in points])
        out[f"tree/{name}_root"] = _mean_or_nan([s[key] for s in roots])
    return out


def _mean_or_nan(xs) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")


def shape_metrics(trees: list[Tree]) -> dict[str, float]:
    """tree/depth_mean, tree/depth_max, tree/nodes_per_tree, tree/branching_mean."""
    depths = [leaf.depth for t in trees for leaf in t.leaves()]
    widths = [len(n.children) for t in trees for n in t.branchable()]
    return {
        "tree/depth_mean": _mean(depths),
        "tree/depth_max": float(max(depths, default=0)),
        "tree/nodes_per_tree": _mean([len(t.nodes()) - 1 for t in trees]),
        "tree/branching_mean": _mean(widths),
    }


def branch_metrics(trees: list[Tree]) -> dict[str, float]:
    """Where branches start: share at the root, mean depth and shared prefix (NaN if none)."""
    points = [(t, n) for t in trees for n in t.branch_points]
    return {
        "rollout/branch_root_share": _mean_or_nan([n is t.root for t, n in points]),
        "rollout/branch_depth_mean": _mean_or_nan([n.depth for _, n in points]),
        "rollout/branch_prefix_tokens_mean": _mean_or_nan([len(t.response_ids(n))
                                                           for t, n in points]),
    }


def tree_metrics(trees: list[Tree], beta: float, prob_norm: str = "mean") -> dict[str, float]:
    """All scalar rollout/* and tree/* metrics of a batch of trees (JSON-serialisable floats)."""
    _check_trees(trees)
    return {**rollout_metrics(trees), **ib_metrics(trees, beta, prob_norm),
            **shape_metrics(trees), **branch_metrics(trees)}


def tree_histograms(trees: list[Tree]) -> dict[str, dict[int, int]]:
    """{"tree/depth_hist": {steps: count}, "tree/branching_hist": {children: count}}, sorted."""
    _check_trees(trees)
    depth = Counter(leaf.depth for t in trees for leaf in t.leaves())
    width = Counter(len(n.children) for t in trees for n in t.branchable())
    return {"tree/depth_hist": dict(sorted(depth.items())),
            "tree/branching_hist": dict(sorted(width.items()))}


# ----------------------------------------------------------------------------- logging


def to_jsonable(value):
    """Tensors / numpy scalars -> float or int; NaN and inf -> None; dicts get str keys."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, bool) or isinstance(value, (int, str)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    raise ValueError(f"metrics: expected numbers, 0-d tensors or dicts, got {type(value).__name__}")


def _open_tensorboard(out_dir: str, purge_step: int | None = None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: JSONL only
        return None
    return SummaryWriter(log_dir=os.path.join(out_dir, "tb"), purge_step=purge_step)


def open_wandb(out_dir: str, project: str, mode: str = "offline", config: dict | None = None,
               resume: bool = False):
    """A Weights & Biases run logging to `project` (`mode` 'offline' or 'online'), its files under
    out_dir/wandb; with `resume` (a training run resumed from its checkpoint) the W&B run of the
    same out_dir continues, else a new one starts. ImportError with the install command when
    wandb is missing."""
    try:
        import wandb
    except ImportError:
        raise ImportError("train.wandb_project is set but wandb is not installed: pip install "
                          "wandb (or set train.wandb_project='')") from None
    id_file = os.path.join(out_dir, "wandb_id")
    if resume and os.path.isfile(id_file):
        with open(id_file, encoding="utf-8") as f:
            run_id = f.read().strip()
    else:
        run_id = wandb.util.generate_id()
        with open(id_file, "w", encoding="utf-8") as f:
            f.write(run_id + "\n")
    return wandb.init(project=project, dir=out_dir, mode=mode, id=run_id, resume="allow",
                      config=config)


class MetricsLogger:
    """Appends one JSON object per step to out_dir/metrics.jsonl, and scalars to TensorBoard and
    (when given a `wandb` run, `open_wandb`) to Weights & Biases."""

    def __init__(self, out_dir: str, tensorboard: bool = True, purge_step: int | None = None,
                 wandb=None):
        """`purge_step`: TensorBoard hides earlier events at this step and after (a resumed run
        logs those steps again). Nothing is created before the first row (`open`)."""
        self.out_dir, self.path = str(out_dir), os.path.join(out_dir, "metrics.jsonl")
        self._tensorboard, self._purge_step = tensorboard, purge_step
        self._file, self._tb, self._wandb = None, None, wandb

    def open(self) -> None:
        """Create out_dir, metrics.jsonl and the TensorBoard writer (at the first row: a run
        stopped before it logged anything, by a bad reward say, leaves none of them)."""
        os.makedirs(self.out_dir, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = _open_tensorboard(self.out_dir, self._purge_step) if self._tensorboard else None

    def log(self, step: int, metrics: dict) -> None:
        row = {"step": int(step), **to_jsonable(dict(metrics))}
        if self._file is None:
            self.open()
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        scalars = {name: v for name, v in row.items()
                   if name != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for name, v in scalars.items():
                self._tb.add_scalar(name, v, global_step=int(step))
        if self._wandb is not None:
            self._wandb.log(scalars, step=int(step))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


NAMESPACES = ("rollout", "tree", "adv", "loss", "train", "time", "eval", "policy", "reward", "sft")


def metric_docs_markdown() -> str:
    """METRIC_DOCS as a two-column Markdown table grouped by namespace (docs/METRICS.md)."""
    order = {ns: i for i, ns in enumerate(NAMESPACES)}
    names = sorted(METRIC_DOCS, key=lambda n: order.get(n.split("/")[0], len(order)))
    rows = [f"| `{name}` | {METRIC_DOCS[name]} |" for name in names]
    return "\n".join(["| metric | meaning |", "|---|---|", *rows])


METRICS_PAGE_HEAD = """# Metrics

Every training step writes one JSON object to `{train.out_dir}/metrics.jsonl` (and the numeric
values as TensorBoard scalars under `tb/`, and to Weights & Biases when `train.wandb_project` is
set); the warm-up writes `sft_log.jsonl`. This table is
`ibtpo.metrics.metric_docs_markdown()`, the one list of names and meanings: a test fails when a
logged metric is missing from it or when this page is out of date. Rewrite the page with
`.venv/bin/python -c "from ibtpo.metrics import write_metrics_page; write_metrics_page()"`.

"""


def metrics_page() -> str:
    """The text of docs/METRICS.md."""
    return METRICS_PAGE_HEAD + metric_docs_markdown() + "\n"


def write_metrics_page(path: str = "docs/METRICS.md") -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(metrics_page())


def read_metrics(path: str) -> list[dict]:
    """Rows of a metrics.jsonl file (or of out_dir/metrics.jsonl when given a directory)."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{i}: not a JSON line ({err.msg})") from None
    return rows
