"""Trees that hold fewer trajectories than their config asks for, and why (ALGORITHM.md §3).

A tree grows ``G = B0 + (L-1)·K·Bn`` trajectories (``rollout.b0``, ``rounds``, ``k``, ``bn``;
``B0`` for the independent scorer) only while every round finds a node to branch from. A tree
stops branching early, and keeps fewer, when
- ``steps``: no node to branch from: every response is one step (no ``rollout.step_delimiter``
  before its end) and the root may not be picked (``rollout.branch_from_root = false``);
- ``room``: every such node's prefix already holds ``sampling.max_new_tokens`` response tokens;
- ``budget``: no branch fits what ``rollout.token_budget`` leaves the tree;
- ``few``: some round found fewer nodes to branch from than ``rollout.k``.
The trainer warns once per run, at the first step whose trees fall short
(`shortfall_message`); `rollout/trajectories_per_prompt` logs G at every step. Nothing here
changes a tree.
"""

from __future__ import annotations

from collections import Counter

from ibtpo.config import Config
from ibtpo.core.branching import candidates
from ibtpo.core.tree import Tree
from ibtpo.rollout.policy import rollout_params
from ibtpo.rollout.sampler import RolloutParams, room


def expected_trajectories(cfg: Config) -> int:
    """G the config asks for: B0 + (L-1)·K·Bn, or B0 for the independent scorer."""
    r = cfg.rollout
    return r.b0 if r.scorer == "independent" else r.b0 + (r.rounds - 1) * r.k * r.bn


def why_short(tree: Tree, params: RolloutParams) -> str:
    """Why a tree that stopped branching early did: 'steps', 'room', 'budget' or 'few'."""
    nodes = candidates(tree, params.branch_params())
    if not nodes:
        return "steps"
    limits = [room(tree, n, params) for n in nodes]
    if max(limits) <= 0:
        return "room"
    left = params.token_budget - tree.num_generated_tokens()
    if params.token_budget and all(params.bn * x > left for x in limits if x > 0):
        return "budget"
    return "few"


def _reason_text(reason: str, cfg: Config) -> str:
    r = cfg.rollout
    root = "" if r.branch_from_root else (", and rollout.branch_from_root=false keeps the root "
                                          "out; set it true to branch from the root")
    return {
        "steps": "had no step to branch from: every response was one step (no "
                 f"rollout.step_delimiter={r.step_delimiter!r} before its end){root}",
        "room": "had no room to branch: every prefix to branch from already holds "
                f"sampling.max_new_tokens={cfg.sampling.max_new_tokens} response tokens",
        "budget": f"had no tokens left for a branch within rollout.token_budget={r.token_budget}",
        "few": f"found fewer nodes to branch from than rollout.k={r.k} in some round",
    }[reason]


def shortfall_message(step: int, trees: list[Tree], cfg: Config) -> str | None:
    """A warning naming the measured and the expected G and why trees fell short; None when
    every tree holds the G its config asks for."""
    expected = expected_trajectories(cfg)
    short = [t for t in trees if len(t.leaves()) < expected]
    if not short:
        return None
    params = rollout_params(cfg)
    reasons = Counter(why_short(t, params) for t in short)
    why = "; ".join(f"{n} {_reason_text(reason, cfg)}" for reason, n in reasons.most_common())
    g = sum(len(t.leaves()) for t in trees) / len(trees)
    r = cfg.rollout
    formula = ("B0" if r.scorer == "independent" else
               f"B0 + (L-1)·K·Bn = {r.b0} + {r.rounds - 1}·{r.k}·{r.bn}")
    return (f"step {step}: G = {g:.1f} trajectories per prompt (rollout/trajectories_per_prompt), "
            f"not the {expected} = {formula} the config asks for (rollout.b0, rounds, k, bn): "
            f"{len(short)} of {len(trees)} trees stopped branching early: {why}. The run goes on "
            "with the trajectories it has; this is said once per run")
