"""Branch scorers: where a tree grows next (ALGORITHM.md §3).

One signature for the whole registry: `score(tree, params, rng) -> {node: float}` over the
candidate nodes (higher = branch there first); the rollout keeps the top K with `select_nodes`.
Candidates are the non-terminal nodes (terminal nodes never get children), and not the root when
`branch_from_root` is False. Shape letters: none (trees are Python objects; P prompts, G
trajectories per prompt where they appear in docs).

Scorers (config key `scorer`):
- "ib": IB(u) of ALGORITHM §2 (`beta`, `prob_norm`).
- "entropy" (TreeRL/EPTree-like): a branch from node u resamples u's *next* step, so u scores the
  entropy of that step as the tree has seen it: the mean over u's children (a merged child counted
  `count` times) of each child step's mean token entropy, at the root as at any other node.
- "random": each candidate scores `rng.random()`, so the top K is a uniform random subset.
- "width" (TreePO-like, fixed width) **(choice)**: fewest samples drawn from the node first (sum
  of its children's counts), then shallowest: score = -(n_samples + depth / (max_depth + 1)).
  On B0 chains this fills level 1 to width 2, then level 2, ... (breadth first).
- "independent": {} (no branching; the rollout samples G independent responses).
Choices: `branch_from_root` lets the root be picked (True here, as the paper's text reads; the run
configs default to False, which matches the paper's token counts: ALGORITHM.md §3); ties in
`select_nodes` are broken at random with the run's seeded `random.Random`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable

from ibtpo.core.ib_score import check_beta, node_ib_scores
from ibtpo.core.tree import PROB_NORMS, Node, Tree


@dataclass
class BranchParams:
    beta: float = 5.0               # IB trade-off (> 0); paper default 5
    prob_norm: str = "mean"         # pi_bar normalisation: "mean" | "sum" | "sibling"
    branch_from_root: bool = True   # may the root be picked (the paper's text; configs: False)

    def __post_init__(self):
        check_beta(self.beta)
        if self.prob_norm not in PROB_NORMS:
            raise ValueError(f"prob_norm: expected one of {PROB_NORMS}, got {self.prob_norm!r}")


Scorer = Callable[[Tree, BranchParams, random.Random], dict[Node, float]]


def candidates(tree: Tree, params: BranchParams) -> list[Node]:
    """Non-terminal nodes, in pre-order; without the root when branch_from_root is False."""
    return [n for n in tree.branchable() if params.branch_from_root or n is not tree.root]


def ib_scorer(tree: Tree, params: BranchParams, rng: random.Random) -> dict[Node, float]:
    scores = node_ib_scores(tree, params.beta, params.prob_norm)
    return {n: scores[n]["ib"] for n in candidates(tree, params) if n in scores}


def _mean_entropy(node: Node) -> float:
    return sum(node.entropies) / len(node.entropies) if node.entropies else 0.0


def next_step_entropy(node: Node) -> float:
    """Count-weighted mean over `node`'s children of their step's mean token entropy (0 if none)."""
    total = sum(c.count for c in node.children)
    return sum(c.count * _mean_entropy(c) for c in node.children) / total if total else 0.0


def entropy_scorer(tree: Tree, params: BranchParams, rng: random.Random) -> dict[Node, float]:
    return {n: next_step_entropy(n) for n in candidates(tree, params)}


def random_scorer(tree: Tree, params: BranchParams, rng: random.Random) -> dict[Node, float]:
    return {n: rng.random() for n in candidates(tree, params)}


def width_scorer(tree: Tree, params: BranchParams, rng: random.Random) -> dict[Node, float]:
    nodes = candidates(tree, params)
    max_depth = max((n.depth for n in tree.nodes()), default=0)
    return {n: -(sum(c.count for c in n.children) + n.depth / (max_depth + 1)) for n in nodes}


def independent_scorer(tree: Tree, params: BranchParams, rng: random.Random) -> dict[Node, float]:
    return {}


SCORERS: dict[str, Scorer] = {
    "ib": ib_scorer,
    "entropy": entropy_scorer,
    "random": random_scorer,
    "width": width_scorer,
    "independent": independent_scorer,
}


def get_scorer(name: str) -> Scorer:
    if name not in SCORERS:
        raise ValueError(f"scorer: expected one of {sorted(SCORERS)}, got {name!r}")
    return SCORERS[name]


def select_nodes(scores: dict[Node, float], k: int, rng: random.Random) -> list[Node]:
    """The k highest-scoring nodes (all of them if fewer), ties broken at random with `rng`."""
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"k: expected an integer >= 0, got {k!r}")
    bad = [s for s in scores.values() if math.isnan(s)]
    if bad:
        raise ValueError(f"scores: expected numbers, got {len(bad)} NaN")
    keyed = [(-s, rng.random(), i) for i, s in enumerate(scores.values())]
    order = sorted(keyed)[:k]
    nodes = list(scores)
    return [nodes[i] for _, _, i in order]
