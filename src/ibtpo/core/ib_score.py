"""IB-Score of a tree node and its diagnostics (ALGORITHM.md §2). Pure functions.

For a non-terminal node u with children c_1..c_B, each sampled once from u:

    r(c)  = p_hat(c) / p_hat(u)          (r := 1 when p_hat(u) = 0)
    eta1  = r(c) - (1 + 1/beta),  eta2 = pi_bar(c)
    IB(u) = (1/B) sum_b eta2(c_b) * eta1(c_b)      (prefactor 1, not the paper's (1+beta)/B)
    tsallis(u) = 1 - mean_b pi_bar(c_b);  cov(u) = mean_b (pi_bar - mean pi_bar)(r - mean r)

Shape letters: P trees (prompts), G trajectories per tree; E edges (non-root nodes, each with its
parent) of one or many trees; U scored (parent) nodes. Trees are small (about 12 leaves, 50
nodes), so arrays are numpy float64.

Choices (config key in brackets):
- `beta` [`beta`, default 5] must be > 0.
- Merged siblings [`merge_identical_steps`]: a child with `count` k counts k times in every mean
  (the sum and B), as ALGORITHM §2 says.
- `pi_bar` normalisation [`prob_norm`]: see `ibtpo.core.tree.pi_bar`.
`ib_score` is the per-node reference; `edge_arrays` + `scores_from_edges` are the vectorised form
used by `node_ib_scores` (whole tree) and `batch_ib_scores` (many trees); the tests check both
agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ibtpo.core.tree import Node, Tree, p_hat, pi_bar


def check_beta(beta: float) -> None:
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta: expected a finite number > 0, got {beta!r}")


def ratio(value, parent_value):
    """r = p_hat(c) / p_hat(u), with r := 1 where p_hat(u) = 0. Works on floats and arrays."""
    parent_value = np.asarray(parent_value, dtype=float)
    safe = np.where(parent_value > 0, parent_value, 1.0)
    out = np.where(parent_value > 0, np.asarray(value, dtype=float) / safe, 1.0)
    return out if out.ndim else float(out)


def eta1(r, beta: float):
    """eta1 = r - (1 + 1/beta)."""
    return r - (1.0 + 1.0 / beta)


# ----------------------------------------------------------------------------- reference (one node)


def _weights(n: int, counts) -> list[float]:
    if counts is None:
        return [1.0] * n
    if len(counts) != n or any(c < 1 for c in counts):
        raise ValueError(f"counts: expected {n} integers >= 1 (one per child), got {list(counts)}")
    return [float(c) for c in counts]


def _check_children(child_probs, child_values) -> None:
    if len(child_probs) == 0:
        raise ValueError("child_probs: expected at least one child")
    if len(child_probs) != len(child_values):
        raise ValueError(f"child_values: expected {len(child_probs)} values (one per child), "
                         f"got {len(child_values)}")


def ib_diagnostics(child_probs, child_values, parent_value: float, beta: float,
                   counts=None) -> dict[str, float]:
    """{"ib", "tsallis", "cov"} of one node from its children's pi_bar and p_hat (loops)."""
    check_beta(beta)
    _check_children(child_probs, child_values)
    w = _weights(len(child_probs), counts)
    b = sum(w)
    rs = [ratio(v, parent_value) for v in child_values]
    ib = sum(wi * p * eta1(r, beta) for wi, p, r in zip(w, child_probs, rs)) / b
    mean_p = sum(wi * p for wi, p in zip(w, child_probs)) / b
    mean_r = sum(wi * r for wi, r in zip(w, rs)) / b
    cov = sum(wi * (p - mean_p) * (r - mean_r) for wi, p, r in zip(w, child_probs, rs)) / b
    return {"ib": ib, "tsallis": 1.0 - mean_p, "cov": cov}


def ib_score(child_probs, child_values, parent_value: float, beta: float, counts=None) -> float:
    """IB(u) = (1/B) sum_b pi_bar(c_b) * (r(c_b) - (1 + 1/beta)), B = sum of counts."""
    return ib_diagnostics(child_probs, child_values, parent_value, beta, counts)["ib"]


# ----------------------------------------------------------------------------- vectorised


@dataclass
class Edges:
    """Every (parent, child) pair of one or many trees, as flat arrays."""

    children: list[Node]        # E child nodes
    parents: list[Node]         # U distinct parents (nodes with >= 1 child)
    parent_idx: np.ndarray      # (E,) index into parents
    pi: np.ndarray              # (E,) pi_bar(child)
    value: np.ndarray           # (E,) p_hat(child)
    parent_value: np.ndarray    # (E,) p_hat(parent)
    count: np.ndarray           # (E,) child.count
    tree_idx: np.ndarray        # (E,) index of the child's tree in the input list


def edge_arrays(trees: list[Tree], prob_norm: str = "mean", source: str = "old") -> Edges:
    """Flat arrays of every edge; `pi` from the sampling (`source="old"`) or reference policy."""
    children, parents, idx, pis, vals, pvals, tix = [], [], [], [], [], [], []
    for ti, tree in enumerate(trees):
        ph, pb = p_hat(tree), pi_bar(tree, prob_norm, source)
        for node in tree.nodes():
            if not node.children:
                continue
            parents.append(node)
            for c in node.children:
                children.append(c)
                idx.append(len(parents) - 1)
                tix.append(ti)
                pis.append(pb[c])
                vals.append(ph[c])
                pvals.append(ph[node])
    return Edges(children, parents, np.array(idx, dtype=np.int64), np.array(pis, dtype=float),
                 np.array(vals, dtype=float), np.array(pvals, dtype=float),
                 np.array([c.count for c in children], dtype=float),
                 np.array(tix, dtype=np.int64))


def _seg_mean(x: np.ndarray, e: Edges) -> np.ndarray:
    """Count-weighted mean of an (E,) array over each parent's children -> (U,)."""
    n = len(e.parents)
    total = np.bincount(e.parent_idx, weights=e.count * x, minlength=n)
    return total / np.bincount(e.parent_idx, weights=e.count, minlength=n)


def scores_from_edges(e: Edges, beta: float) -> dict[str, np.ndarray]:
    """{"ib", "tsallis", "cov"}: (U,) arrays, one entry per parent in `e.parents`."""
    check_beta(beta)
    r = ratio(e.value, e.parent_value)                        # (E,)
    r = np.asarray(r, dtype=float).reshape(-1)
    mean_p, mean_r = _seg_mean(e.pi, e), _seg_mean(r, e)      # (U,)
    dp, dr = e.pi - mean_p[e.parent_idx], r - mean_r[e.parent_idx]
    return {"ib": _seg_mean(e.pi * eta1(r, beta), e), "tsallis": 1.0 - mean_p,
            "cov": _seg_mean(dp * dr, e)}


def batch_ib_scores(trees: list[Tree], beta: float,
                    prob_norm: str = "mean") -> dict[Node, dict[str, float]]:
    """node_ib_scores for many trees at once (one set of arrays)."""
    check_beta(beta)
    e = edge_arrays(trees, prob_norm)
    if not e.parents:
        return {}
    s = scores_from_edges(e, beta)
    return {u: {k: float(s[k][i]) for k in s} for i, u in enumerate(e.parents)}


def node_ib_scores(tree: Tree, beta: float, prob_norm: str = "mean") -> dict[Node, dict]:
    """{node: {"ib", "tsallis", "cov"}} for every non-terminal node with >= 1 child."""
    return batch_ib_scores([tree], beta, prob_norm)
