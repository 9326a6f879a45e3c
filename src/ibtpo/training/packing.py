"""Tree packing: every tree's prompt and step nodes run through the model once (DESIGN.md "Scale").

The unpacked batch (`training.batch`) has one row per trajectory, so the prompt and every shared
step run once per trajectory through them (ALGORITHM.md §4). Here each tree is laid out once: the
prompt, then every step node in pre-order. A token attends to the tokens before it in its own node
and to every token of its node's ancestors (the prompt included), nothing else; its position id is
its position in any trajectory through it. Its logits are then those of the unpacked forward, and
the loss weights below make the loss and its gradient those of the unpacked batch.
Independent sampling (GRPO) packs the same way: the prompt once, the responses as its branches.

Shape letters: R packed rows, L tokens per row (right-padded to the longest row), E step nodes of
the batch. A row holds whole trees, one after the other, up to `pack_tokens` tokens (first-fit
decreasing; a larger tree gets a row of its own); padding exists only after a row's end, up to
the longest row of the micro-batch. Rows are sorted longest first.

Layout tensors, all (R, L):
- `span_end`: key k is visible from query q iff k <= q < span_end[k]; span_end[k] is the end of the
  subtree of k's node (pre-order keeps a subtree contiguous; prompt tokens: the tree's end;
  padding: its own index + 1, itself only). One tensor gives the whole mask: `tree_attention_mask`
  (boolean, SDPA) or `tree_block_mask` (FlexAttention).
- `position_ids`: prompt length + tokens of the node's ancestors + index in the node.
- `logit_index`: the position whose logits predict token t: t - 1 inside a node; the parent's last
  token (the prompt's last token for a first step) for a node's first token.
- `token_node`: index into `nodes` of the step holding token t (-1: prompt or padding), to map
  per-token values (reference log-probs, entropies) back to tree nodes (`node_values`).

Loss weights (ALGORITHM.md §5, `core.losses.weighted_policy_loss`). The unpacked loss is
sum_i sum_{t in i} w_i f(rho_t, A_it) / D with w_i = 1 (token-mean), 1 / n_i
(seq-mean-token-mean; n_i = response tokens of trajectory i) or 1 / max_response_len
(seq-mean-token-sum-norm), and D = trained tokens, trajectories with a token, or trajectories.
Grouped per packed token u (the trajectories i through u share its rho, KL and entropy):
    weight(u) = sum_i w_i,  pos_weight(u) = sum_i w_i max(A_iu, 0),
    neg_weight(u) = sum_i w_i max(-A_iu, 0)
The clipped surrogate is A g+(rho) for A >= 0 and |A| g-(rho) for A < 0, so
sum_i w_i pg(rho, A_iu) = pos_weight g+(rho) + neg_weight g-(rho) exactly, also where the
trajectories through a token carry different advantages (GRPO's advantage on a branched tree, merged
steps). IB-TPO's advantage is per node, so there one of the two is zero. `count`, `count_pos`,
`count_neg` (trajectories through u, with A > 0, with A < 0) keep the token metrics (clip fractions,
mean ratio) those of the unpacked batch. `row_denominator` (R,) is each row's share of D, so a
micro-batch of rows is weighted as the trainer weights unpadded micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ibtpo.core.losses import AGG_MODES, weighted_policy_loss
from ibtpo.core.tree import Node, Tree
from ibtpo.training.batch import RowBatch, check_advantages

WEIGHT_FIELDS = ("weight", "pos_weight", "neg_weight", "count", "count_pos", "count_neg")


@dataclass
class PackedBatch(RowBatch):
    """Packed trees, several per row; see the module docstring for every field."""

    input_ids: torch.Tensor  # (R, L) long, pad_token_id after each row's end
    position_ids: torch.Tensor  # (R, L) long
    span_end: torch.Tensor  # (R, L) long
    logit_index: torch.Tensor  # (R, L) long
    old_logprobs: torch.Tensor  # (R, L) float, sampling-policy log-prob of input_ids[:, t]
    token_node: torch.Tensor  # (R, L) long, index into `nodes`, -1 on prompt and padding
    row_length: torch.Tensor  # (R,) long, tokens of each row before its padding
    weight: torch.Tensor  # (R, L) float, sum of the aggregation weights w_i through the token
    pos_weight: torch.Tensor  # (R, L) float, sum of w_i max(A_i, 0)
    neg_weight: torch.Tensor  # (R, L) float, sum of w_i max(-A_i, 0)
    count: torch.Tensor  # (R, L) float, trajectories through the token (0: prompt, padding)
    count_pos: torch.Tensor  # (R, L) float, ... of them with A > 0
    count_neg: torch.Tensor  # (R, L) float, ... of them with A < 0
    row_denominator: torch.Tensor  # (R,) float, the row's share of the aggregation denominator
    ref_logprobs: torch.Tensor | None = None  # (R, L) float, set by the trainer's reference step
    nodes: list[Node] = field(default_factory=list)  # step nodes in `token_node` order
    # per tree, per trajectory: (row, indices into `nodes` of its steps); a node appears once in a
    # packed tree, once per trajectory through it in an unrolled one
    trajectories: list[list[tuple[int, list[int]]]] = field(default_factory=list)
    agg_mode: str | None = None  # the aggregation the weights were computed for

    def slice(self, i: int, j: int) -> "PackedBatch":
        """Rows i..j-1, cut after the longest of them (a micro-batch); views, no copy."""
        width = int(self.row_length[i:j].max()) if j > i else 0
        return self._map(lambda t: t[i:j, :width] if t.dim() == 2 else t[i:j])

    def trained_mask(self) -> torch.Tensor:
        """(R, L) 1 on the tokens trained on (step tokens; not prompt, not padding)."""
        return (self.token_node >= 0).to(self.old_logprobs.dtype)

    def model_inputs(self, attention: str = "sdpa") -> dict:
        """Keyword arguments of `training.logprobs.sequence_logprobs` for this batch."""
        mask = (tree_block_mask(self.span_end) if attention == "flex"
                else tree_attention_mask(self.span_end))
        return {"input_ids": self.input_ids, "attention_mask": mask,
                "position_ids": self.position_ids, "logit_index": self.logit_index}

    def agg_count(self, agg_mode: str) -> torch.Tensor:
        """This batch's share of the aggregation denominator (the trainer's micro-batch weight)."""
        self._check_mode(agg_mode)
        return self.row_denominator.sum()

    def loss(self, logprobs, entropy, *, agg_mode: str, max_response_len: int | None = None,
             **loss_kwargs):
        """`weighted_policy_loss` over this batch (same value as the unpacked batch's)."""
        self._check_mode(agg_mode)
        weights = {name: getattr(self, name) for name in WEIGHT_FIELDS}
        return weighted_policy_loss(logprobs, self.old_logprobs, weights,
                                    self.row_denominator.sum(), ref_logprobs=self.ref_logprobs,
                                    entropy=entropy, **loss_kwargs)

    def _check_mode(self, agg_mode: str) -> None:
        if agg_mode != self.agg_mode:
            raise ValueError(f"agg_mode: the weights were computed for {self.agg_mode!r}, "
                             f"got {agg_mode!r} (call assign_advantages first)")


# ----------------------------------------------------------------------------- masks


def tree_attention_mask(span_end: torch.Tensor) -> torch.Tensor:
    """(R, 1, L, L) boolean mask, True = attend: key k <= query q < span_end[k]."""
    ar = torch.arange(span_end.shape[1], device=span_end.device)
    causal = ar[:, None] >= ar[None, :]  # (L, L) q >= k
    return (causal[None] & (ar[None, :, None] < span_end[:, None, :]))[:, None]


def tree_mask_mod(span_end: torch.Tensor):
    """The same mask as a FlexAttention `mask_mod(b, h, q, k)`."""
    def visible(b, h, q, k):
        return (k <= q) & (q < span_end[b, k])
    return visible


def tree_block_mask(span_end: torch.Tensor):
    """The same mask as a FlexAttention `BlockMask`, which skips fully masked blocks (rows of many
    trees, long trees). For CUDA: torch has no FlexAttention backward on CPU. Needs a model with
    `attn_implementation="flex_attention"`."""
    from torch.nn.attention.flex_attention import create_block_mask

    r, length = span_end.shape
    return create_block_mask(tree_mask_mod(span_end), r, None, length, length,
                             device=span_end.device)


# ----------------------------------------------------------------------------- layout


@dataclass
class TreeLayout:
    """One tree laid out from index 0: lists, one entry per token."""

    ids: list[int]
    position_ids: list[int]
    span_end: list[int]
    logit_index: list[int]
    old_logprobs: list[float]
    token_node: list[int]  # index into `nodes` (local), -1 on the prompt
    nodes: list[Node]  # step nodes in pre-order


def layout_tree(tree: Tree, path: list[Node] | None = None) -> TreeLayout:
    """The prompt, then every step node in pre-order (see the module docstring); with `path` (one
    trajectory's steps) only those: the trajectory unrolled as a chain."""
    n = len(tree.prompt_ids)
    nodes = list(path) if path is not None else [s for s in tree.nodes() if s is not tree.root]
    out = TreeLayout(list(tree.prompt_ids), list(range(n)), [], [max(i - 1, 0) for i in range(n)],
                     [0.0] * n, [-1] * n, nodes)
    start, last, next_pos = {}, {tree.root: n - 1}, {tree.root: n}
    for k, s in enumerate(out.nodes):
        p, m, i = s.parent, len(s.token_ids), len(out.ids)
        start[s] = i
        out.ids += s.token_ids
        out.old_logprobs += s.logprobs
        out.token_node += [k] * m
        out.position_ids += range(next_pos[p], next_pos[p] + m)
        out.logit_index += ([last[p]] + list(range(i, i + m - 1))) if m else []
        last[s], next_pos[s] = (i + m - 1 if m else last[p]), next_pos[p] + m
    end = {}
    for s in reversed(out.nodes):  # children before parents
        end[s] = max([start[s] + len(s.token_ids)] + [end[c] for c in s.children if c in end])
    out.span_end = [len(out.ids)] * n + [end[out.nodes[k]] for k in out.token_node[n:]]
    return out


def assign_rows(sizes: list[int], pack_tokens: int) -> list[list[int]]:
    """First-fit decreasing: tree indices per row, each row <= pack_tokens tokens unless it holds
    one larger tree alone."""
    rows: list[list[int]] = []
    used: list[int] = []
    for p in sorted(range(len(sizes)), key=lambda p: -sizes[p]):
        row = next((r for r in range(len(rows)) if used[r] + sizes[p] <= pack_tokens), None)
        if row is None:
            rows.append([])
            used.append(0)
            row = len(rows) - 1
        rows[row].append(p)
        used[row] += sizes[p]
    return rows


def _pad(rows: list[list], value, width: int, dtype) -> torch.Tensor:
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=dtype)  # (R, L)


def row_cost(tokens: int, attention_cost: float) -> float:
    """Relative cost of a row: its tokens through the linear layers, plus every (query, key) pair
    through dense attention, a pair costing 1 / attention_cost of a token."""
    return tokens + tokens * tokens / attention_cost


def unroll_pays(tree: Tree, attention_cost: float | None) -> bool:
    """Is the tree cheaper as one row per trajectory than packed? Packing saves the shared tokens
    but pays attention between branches that never see each other (a GRPO group of long
    responses on a narrow model)."""
    if not attention_cost:
        return False
    chains = [len(tree.prompt_ids) + len(tree.response_ids(leaf)) for leaf in tree.leaves()]
    packed = len(tree.prompt_ids) + sum(len(s.token_ids) for s in tree.nodes())
    return sum(row_cost(c, attention_cost) for c in chains) < row_cost(packed, attention_cost)


def tree_layouts(trees: list[Tree], attention_cost: float | None, unroll: str = "auto"):
    """Layouts (one per packed tree, one per trajectory of an unrolled tree) and, per tree and
    trajectory, (layout index, positions of its steps in that layout's node list). `unroll`:
    'auto' (where `unroll_pays`), 'never' or 'always'."""
    layouts, where = [], []
    for tree in trees:
        trajs = tree.trajectories()
        if unroll == "always" or (unroll == "auto" and unroll_pays(tree, attention_cost)):
            where.append([(len(layouts) + g, list(range(len(t)))) for g, t in enumerate(trajs)])
            layouts += [layout_tree(tree, traj) for traj in trajs]
            continue
        lay = layout_tree(tree)
        local = {s: k for k, s in enumerate(lay.nodes)}
        where.append([(len(layouts), [local[s] for s in traj]) for traj in trajs])
        layouts.append(lay)
    return layouts, where


def pack_trees(trees: list[Tree], pad_token_id: int, pack_tokens: int = 512,
               attention_cost: float | None = None, unroll: str = "auto") -> PackedBatch:
    """Lay every tree out once and pack the layouts into rows of at most `pack_tokens` tokens.

    With `attention_cost` (what a token costs in (query, key) pairs, ~3x the model's hidden size
    for dense attention), a tree whose trajectories share too little to pay for the attention
    between its branches is unrolled into one chain per trajectory (`unroll_pays`); `unroll`
    ('auto', 'never', 'always') overrides that choice.
    The loss weights are zero until `assign_advantages` (so the reference forward can run first).
    """
    if not trees:
        raise ValueError("trees: expected at least one tree")
    if pack_tokens < 1:
        raise ValueError(f"pack_tokens: expected an integer >= 1, got {pack_tokens!r}")
    layouts, where = tree_layouts(trees, attention_cost, unroll)
    base = np.cumsum([0] + [len(lay.nodes) for lay in layouts]).tolist()
    cols = {k: [] for k in ("ids", "pos", "span", "src", "lp", "node")}
    layout_rows = [0] * len(layouts)
    for r, members in enumerate(assign_rows([len(lay.ids) for lay in layouts], pack_tokens)):
        row = {k: [] for k in cols}
        for p in members:
            lay, off = layouts[p], len(row["ids"])
            layout_rows[p] = r
            row["ids"] += lay.ids
            row["pos"] += lay.position_ids
            row["span"] += [off + e for e in lay.span_end]
            row["src"] += [off + i for i in lay.logit_index]
            row["lp"] += lay.old_logprobs
            row["node"] += [base[p] + k if k >= 0 else -1 for k in lay.token_node]
        for k in cols:
            cols[k].append(row[k])
    occurrences = [[(layout_rows[i], [base[i] + k for k in ks]) for i, ks in traj]
                   for traj in where]
    return _tensors(cols, layouts, occurrences, pad_token_id)


def _tensors(cols: dict, layouts: list[TreeLayout], occurrences: list,
             pad_token_id: int) -> PackedBatch:
    lengths = [len(r) for r in cols["ids"]]
    order = sorted(range(len(lengths)), key=lambda r: -lengths[r])  # longest rows first
    cols = {k: [v[r] for r in order] for k, v in cols.items()}
    where = {r: i for i, r in enumerate(order)}
    width = max(lengths)
    own = [list(range(len(r) + 1, width + 1)) for r in cols["ids"]]  # padding sees itself only
    span = torch.tensor([s + o for s, o in zip(cols["span"], own)], dtype=torch.long)  # (R, L)
    zeros = torch.zeros((len(order), width))  # (R, L)
    return PackedBatch(
        input_ids=_pad(cols["ids"], pad_token_id, width, torch.long),
        position_ids=_pad(cols["pos"], 0, width, torch.long), span_end=span,
        logit_index=_pad(cols["src"], 0, width, torch.long),
        old_logprobs=_pad(cols["lp"], 0.0, width, torch.float32),
        token_node=_pad(cols["node"], -1, width, torch.long),
        row_length=torch.tensor([lengths[r] for r in order], dtype=torch.long),
        **{name: zeros.clone() for name in WEIGHT_FIELDS},
        row_denominator=torch.zeros(len(order)),
        nodes=[s for lay in layouts for s in lay.nodes],
        trajectories=[[(where[r], occ) for r, occ in tree] for tree in occurrences])


def micro_batch_bounds(row_lengths: list[int], max_tokens: int,
                       max_padding: float = 0.25) -> list[tuple[int, int]]:
    """Row ranges (rows sorted longest first) whose rows x longest row stay within `max_tokens`
    (at least one row each), a row joining a range only if it is padded by at most `max_padding`
    of the range's longest row: short rows are not padded to a long tree's row."""
    bounds, i = [], 0
    while i < len(row_lengths):
        width, j = max(1, row_lengths[i]), i + 1
        while (j < len(row_lengths) and (j - i + 1) * width <= max_tokens
               and row_lengths[j] >= (1 - max_padding) * width):
            j += 1
        bounds.append((i, j))
        i = j
    return bounds


# ----------------------------------------------------------------------------- loss weights


def trajectory_weight(n_tokens: int, agg_mode: str, max_response_len: int | None) -> float:
    """w_i of one trajectory with `n_tokens` response tokens (module docstring)."""
    if agg_mode == "token-mean":
        return 1.0
    if agg_mode == "seq-mean-token-mean":
        return 1.0 / n_tokens if n_tokens else 0.0
    if agg_mode == "seq-mean-token-sum-norm":
        if not max_response_len:
            raise ValueError("max_response_len: expected a positive integer for "
                             "seq-mean-token-sum-norm with packed trees, got None")
        return 1.0 / max_response_len
    raise ValueError(f"agg_mode: expected one of {AGG_MODES}, got {agg_mode!r}")


def denominator_share(n_tokens: int, agg_mode: str) -> float:
    """What one trajectory adds to the aggregation denominator D."""
    if agg_mode == "token-mean":
        return float(n_tokens)
    return float(n_tokens > 0) if agg_mode == "seq-mean-token-mean" else 1.0


def node_weights(batch: PackedBatch, trees: list[Tree], advantages, agg_mode: str,
                 max_response_len: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-node sums (6, E) in WEIGHT_FIELDS order, and each row's denominator share (R,)."""
    acc = np.zeros((len(WEIGHT_FIELDS), len(batch.nodes)))  # (6, E)
    rows = np.zeros(len(batch))  # (R,)
    for p, tree in enumerate(trees):
        for traj, adv, (row, occ) in zip(tree.trajectories(), advantages[p],
                                         batch.trajectories[p]):
            n = sum(len(s.token_ids) for s in traj)
            w = trajectory_weight(n, agg_mode, max_response_len)
            e = np.array(occ, dtype=np.int64)
            a = np.asarray(adv, dtype=np.float64)
            for f, v in enumerate((w, w * np.maximum(a, 0), w * np.maximum(-a, 0), 1.0, a > 0,
                                   a < 0)):
                np.add.at(acc[f], e, v)
            rows[row] += denominator_share(n, agg_mode)
    return acc, rows


def assign_advantages(batch: PackedBatch, trees: list[Tree], advantages, agg_mode: str,
                      max_response_len: int | None = None) -> PackedBatch:
    """Set the loss weights of `batch` (built by `pack_trees(trees)`) from `advantages[p][g][k]`
    as the estimators return them, for aggregation `agg_mode`; returns the batch."""
    check_advantages(trees, advantages)
    acc, rows = node_weights(batch, trees, advantages, agg_mode, max_response_len)
    node = batch.token_node.cpu()
    valid = node >= 0
    per_node = torch.tensor(acc, dtype=torch.float32)  # (6, E)
    for f, name in enumerate(WEIGHT_FIELDS):
        values = torch.where(valid, per_node[f][node.clamp(min=0)], 0.0)  # (R, L)
        setattr(batch, name, values.to(batch.input_ids.device))
    batch.row_denominator = torch.tensor(rows, dtype=torch.float32,
                                         device=batch.input_ids.device)  # (R,)
    batch.agg_mode = agg_mode
    return batch


def node_values(batch: PackedBatch, values: torch.Tensor) -> dict[Node, torch.Tensor]:
    """{step node: values (R, L) of its tokens, in order}, e.g. reference log-probs per step."""
    flat_node, flat = batch.token_node.reshape(-1), values.reshape(-1)
    keep = flat_node >= 0
    order = torch.argsort(flat_node[keep], stable=True)
    counts = torch.bincount(flat_node[keep], minlength=len(batch.nodes)).tolist()
    parts = torch.split(flat[keep][order], counts)
    out: dict[Node, torch.Tensor] = {}
    for node, part in zip(batch.nodes, parts):  # an unrolled node: its first occurrence
        out.setdefault(node, part)
    return out


def trajectory_tokens(trees: list[Tree]) -> int:
    """Tokens an unpacked, unpadded batch would hold: prompt + response of every trajectory."""
    return sum(len(t.prompt_ids) + len(t.response_ids(leaf)) for t in trees for leaf in t.leaves())
