"""Step-level advantages: GRPO and IB-TPO (ALGORITHM.md §4). Pure functions of trees.

One signature for the registry: `estimator(trees, params) -> (adv, metrics)` where
`adv[p][g][k]` is the advantage of step k of trajectory g (in `tree.trajectories()` order) of
tree p; every token of that step gets it. Shape letters: P trees (prompts), G trajectories per
tree, E non-root nodes of the whole batch (the vectorised form works on (E,) numpy arrays).

    A_GL(s) = (p_hat(s) - p_hat(root)) / (std({R(tau)}) + eps_std)
    A_IB(s) = (r(s) - (1 + 1/beta)) * pi_bar(s),   r(s) = p_hat(s) / p_hat(parent)  (r := 1 at 0)
    A(s)    = A_GL(s) + lam * A_IB(s)
    GRPO:  A(tau) = (R(tau) - mean R) / (std R + eps_std) on every step of tau

Choices (config key in brackets):
- std is the sample (unbiased, ddof=1) std of the tree's leaf rewards; a tree with one trajectory
  has no defined std: it is treated as 0, so its A_GL (and GRPO advantage) is 0.
- Groups whose rewards are all equal get A_GL = 0 exactly (and GRPO 0), not float noise; A_IB there
  is applied iff [`ib_adv_on_zero_var_groups`, default True].
- p_hat(root) is the tree's mean leaf reward, computed as GRPO's mean, so a chain tree with lam = 0
  gives exactly GRPO's advantage (tested).
- pi_bar in A_IB is the sampling (old) policy's step probability [`ib_prob`, default "old"]: the
  term is the gradient of pi_theta(s) * eta1(s) written as a PPO ratio pi_theta / pi_old times
  pi_old(s) * eta1(s). "ref" uses the reference policy's, as the paper writes pi_ref (nodes then
  need `ref_logprobs`, filled by the trainer). [`prob_norm`, default "mean"]; [`lam`, 0.1],
  [`beta`, 5], [`eps_std`, 1e-4].
- Reward None (unscorable) counts as 0.0 (the rollout counts them); NaN, < 0, > 1 raise ValueError.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ibtpo.core.ib_score import check_beta, edge_arrays, eta1, ratio
from ibtpo.core.tree import PROB_NORMS, PROB_SOURCES, Node, Tree, leaf_reward


@dataclass
class AdvParams:
    beta: float = 5.0                       # IB trade-off (> 0), paper default 5
    lam: float = 0.1                        # weight of A_IB (0 = pure A_GL); paper 0.1
    prob_norm: str = "mean"                 # pi_bar: "mean" | "sum" | "sibling"
    ib_adv_on_zero_var_groups: bool = True  # apply A_IB in groups whose rewards are all equal
    eps_std: float = 1e-4                   # added to the reward std
    ib_prob: str = "old"                    # pi_bar in A_IB: "old" (sampling) or "ref" policy

    def __post_init__(self):
        check_beta(self.beta)
        if self.prob_norm not in PROB_NORMS:
            raise ValueError(f"prob_norm: expected one of {PROB_NORMS}, got {self.prob_norm!r}")
        if not math.isfinite(self.lam):
            raise ValueError(f"lam: expected a finite number, got {self.lam!r}")
        if self.ib_prob not in PROB_SOURCES:
            raise ValueError(f"ib_prob: expected one of {PROB_SOURCES}, got {self.ib_prob!r}")
        if not (math.isfinite(self.eps_std) and self.eps_std >= 0):
            raise ValueError(f"eps_std: expected a finite number >= 0, got {self.eps_std!r}")


Advantages = list[list[list[float]]]
Estimator = Callable[[list[Tree], AdvParams], tuple[Advantages, dict]]


def _check_trees(trees: list[Tree]) -> None:
    if len(trees) == 0:
        raise ValueError("trees: expected at least one tree")


def group_stats(rewards: list[float]) -> tuple[float, float]:
    """(mean, sample std with ddof=1) of one group's rewards; std = 0 for a single reward."""
    if not rewards:
        raise ValueError("tree: expected at least one trajectory (leaf) per tree")
    r = np.asarray(rewards, dtype=float)
    return float(r.mean()), (float(r.std(ddof=1)) if len(r) > 1 else 0.0)


def tree_rewards(tree: Tree) -> list[float]:
    return [leaf_reward(leaf) for leaf in tree.leaves()]


def _all_equal(rewards: list[float]) -> bool:
    return max(rewards) == min(rewards)


def _per_step(tree: Tree, value: dict[Node, float]) -> list[list[float]]:
    return [[value[s] for s in traj] for traj in tree.trajectories()]


def _summary(adv: Advantages, zero_var: list[bool]) -> dict[str, float]:
    flat = np.array([a for t in adv for traj in t for a in traj], dtype=float)
    return {"adv/mean": float(flat.mean()) if flat.size else 0.0,
            "adv/std": float(flat.std()) if flat.size else 0.0,
            "adv/zero_var_frac": float(np.mean(zero_var))}


# ----------------------------------------------------------------------------- GRPO


def grpo_advantages(trees: list[Tree], params: AdvParams) -> tuple[Advantages, dict]:
    """A(tau) = (R - mean R) / (std R + eps_std) on every step; 0 for all-equal groups."""
    _check_trees(trees)
    adv, zero_var = [], []
    for tree in trees:
        rewards = tree_rewards(tree)
        mean, std = group_stats(rewards)
        zero_var.append(_all_equal(rewards))
        a = [0.0 if zero_var[-1] else (r - mean) / (std + params.eps_std) for r in rewards]
        adv.append([[a_j] * len(traj) for a_j, traj in zip(a, tree.trajectories())])
    return adv, _summary(adv, zero_var)


# ----------------------------------------------------------------------------- IB-TPO


def ibtpo_node_advantages(trees: list[Tree], params: AdvParams) -> tuple[dict, dict]:
    """{node: A(s)} for every non-root node of every tree, vectorised over all nodes at once."""
    _check_trees(trees)
    stats = [group_stats(tree_rewards(t)) for t in trees]
    zero_var = np.array([_all_equal(tree_rewards(t)) for t in trees])        # (P,)
    root_value = np.array([m for m, _ in stats])                              # (P,)
    std = np.array([s for _, s in stats])                                     # (P,)
    e = edge_arrays(trees, params.prob_norm, params.ib_prob)
    zv = zero_var[e.tree_idx]                                                 # (E,)
    a_gl = (e.value - root_value[e.tree_idx]) / (std[e.tree_idx] + params.eps_std)
    a_gl = np.where(zv, 0.0, a_gl)                                            # (E,)
    a_ib = eta1(np.asarray(ratio(e.value, e.parent_value)).reshape(-1), params.beta) * e.pi
    if not params.ib_adv_on_zero_var_groups:
        a_ib = np.where(zv, 0.0, a_ib)                                        # (E,)
    a = a_gl + params.lam * a_ib                                              # (E,)
    metrics = {"adv/a_gl_abs_mean": float(np.abs(a_gl).mean()) if a.size else 0.0,
               "adv/a_ib_mean": float(a_ib.mean()) if a.size else 0.0}
    return dict(zip(e.children, a.tolist())), {"zero_var": zero_var.tolist(), **metrics}


def ibtpo_advantages(trees: list[Tree], params: AdvParams) -> tuple[Advantages, dict]:
    """A(s) = A_GL(s) + lam * A_IB(s) per step of every trajectory (ALGORITHM §4)."""
    node_adv, info = ibtpo_node_advantages(trees, params)
    adv = [_per_step(tree, node_adv) for tree in trees]
    metrics = _summary(adv, info.pop("zero_var"))
    return adv, {**metrics, **info}


ESTIMATORS: dict[str, Estimator] = {"grpo": grpo_advantages, "ibtpo": ibtpo_advantages}


def get_estimator(name: str) -> Estimator:
    if name not in ESTIMATORS:
        raise ValueError(f"estimator: expected one of {sorted(ESTIMATORS)}, got {name!r}")
    return ESTIMATORS[name]
