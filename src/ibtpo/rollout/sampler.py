"""Grows the rollout trees: initial chains, branching rounds, rewards, token accounting.

Implements ALGORITHM.md §3 (IBTree and the other branch scorers of `ibtpo.core.branching`). One tree
per prompt (P prompts, G trajectories per tree):
1. round 0: `b0` independent responses from each root, cut into chains of steps, leaves scored;
2. rounds 1 .. L-1: per tree, score the candidate nodes, pick the top `k` (`select_nodes`, ties
   broken with the tree's own `random.Random`), sample `bn` continuations of each picked node's
   prefix, hang them as new chains, score the new leaves; `tree.branch_points` records the node
   of every branch, in order. With no branching (every candidate dropped, or the
   "independent" scorer, which scores nothing) the loop stops early.
Every round is one `engine.generate` call over the requests of all trees together. Randomness
is per tree (`TreeStreams`, from the tree's key): its tie-breaking stream and one sampling key per
continuation, numbered in the order the tree asks for them, so a tree grows the same whatever
other trees share its batch or in what order requests run. Rewards are
computed as leaves appear, because the IB-Score needs leaf rewards to choose where to branch.
G = b0 + (L-1)·k·bn when nothing below stops a branch.

Choices (config key in brackets):
- Generation limit of a branch [`max_new_tokens`]: `max_new_tokens` minus the response tokens
  already in the node's prefix, so no trajectory exceeds `max_new_tokens` response tokens. A
  candidate with no room left (limit 0) is dropped before `select_nodes`.
- Token budget per prompt [`token_budget`, 0 = none] counts generated tokens only (not the prompt,
  not a shared prefix) and is never exceeded: a pick reserves its worst case, `bn` × its
  generation limit, and is only made if that fits what the tree has left. Candidates that do not
  fit are dropped before `select_nodes`, so a tree near its budget may still branch from a deeper
  node (less room, fewer tokens). The `b0` initial chains must fit:
  `token_budget >= b0 · max_new_tokens`.
- Unscorable leaves (reward function returned None) keep `reward = None`, count as 0.0 in every
  value (see `ibtpo.core.tree.leaf_reward`) and are counted in `rollout/unscorable`.
- Steps are cut on decoded text at [`step_delimiter`]; identical sibling steps are merged iff
  [`merge_identical_steps`]. The reward function sees `decode(response token ids)`.
Metrics: rollout/generated_tokens, rollout/num_trajectories, rollout/unscorable, rollout/rounds,
rollout/branches (continuations sampled in rounds 1 .. L-1), time/generate_s, time/reward_s.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable

from ibtpo.core.branching import BranchParams, get_scorer, select_nodes
from ibtpo.core.tree import Node, Tree, attach_response, leaf_reward, new_tree
from ibtpo.rollout.engines.contract import SamplingParams
from ibtpo.seeding import stream_key


@dataclass
class RolloutParams:
    """How the trees grow. Paper default IBTree (b0, rounds, k, bn) = (4, 9, 1, 1)."""

    scorer: str = "ib"  # branch scorer: ib | entropy | random | width | independent
    b0: int = 4  # initial independent chains per prompt (= G for "independent")
    rounds: int = 9  # L: the initial round + L-1 branching rounds
    k: int = 1  # K: nodes branched from per tree per round
    bn: int = 1  # Bn: continuations sampled from each picked node
    max_new_tokens: int = 64  # response tokens of any trajectory, at most
    step_delimiter: str = "\n\n"  # text that ends a step
    merge_identical_steps: bool = False  # merge identical sibling steps into one node
    branch_from_root: bool = True  # the root may be picked (the paper's text; configs: False)
    beta: float = 5.0  # IB trade-off, for the "ib" scorer
    prob_norm: str = "mean"  # pi_bar normalisation: mean | sum | sibling
    token_budget: int = 0  # generated tokens per prompt, never exceeded; 0 = no budget
    prefix_cache_mb: int = 0  # continuous scheduler: branch-prefix KV reuse cap; 0 = off

    def __post_init__(self) -> None:
        get_scorer(self.scorer)
        for name, low in (("b0", 1), ("rounds", 1), ("k", 0), ("bn", 1), ("max_new_tokens", 0),
                          ("token_budget", 0), ("prefix_cache_mb", 0)):
            if getattr(self, name) < low:
                raise ValueError(
                    f"{name}: expected an integer >= {low}, got {getattr(self, name)!r}")
        if not self.step_delimiter:
            raise ValueError("step_delimiter: expected a non-empty string")
        if 0 < self.token_budget < self.b0 * self.max_new_tokens:
            raise ValueError(f"token_budget: expected 0 or >= b0 * max_new_tokens "
                             f"= {self.b0 * self.max_new_tokens}, got {self.token_budget}")

    def branch_params(self) -> BranchParams:
        return BranchParams(beta=self.beta, prob_norm=self.prob_norm,
                            branch_from_root=self.branch_from_root)


@dataclass
class Request:
    """One continuation to sample: from `node` of `tree`, at most `limit` new tokens."""

    tree: Tree
    node: Node
    limit: int
    key: int  # the continuation's sampling stream (`TreeStreams.next_key`)


class TreeStreams:
    """One tree's randomness, from its key: a tie-breaking / random-scorer stream and one
    sampling key per continuation, numbered 0, 1, ... in the order the tree requests them."""

    def __init__(self, key: int):
        self.key, self.count = key, 0
        self.rng = random.Random(stream_key(key, "branching"))

    def next_key(self) -> int:
        self.count += 1
        return stream_key(self.key, "sample", self.count - 1)


def room(tree: Tree, node: Node, params: RolloutParams) -> int:
    """Generation limit of a continuation of `node`: max_new_tokens minus its response tokens."""
    return params.max_new_tokens - len(tree.response_ids(node))


def initial_requests(trees: list[Tree], streams: list[TreeStreams],
                     params: RolloutParams) -> list[Request]:
    """Round 0: `b0` full-length responses from every root."""
    return [Request(t, t.root, params.max_new_tokens, st.next_key())
            for t, st in zip(trees, streams) for _ in range(params.b0)]


def tree_requests(tree: Tree, params: RolloutParams, scorer, bparams: BranchParams,
                  streams: TreeStreams) -> list[Request]:
    """One tree's branches for this round: top-k candidates that have room and fit the budget."""
    left = params.token_budget - tree.num_generated_tokens() if params.token_budget else None
    rng = streams.rng
    scores = scorer(tree, bparams, rng)
    limits = {node: room(tree, node, params) for node in scores}
    fits = {n: s for n, s in scores.items()
            if limits[n] > 0 and (left is None or params.bn * limits[n] <= left)}
    out = []
    for node in select_nodes(fits, params.k, rng):
        cost = params.bn * limits[node]  # worst case: every continuation runs to its limit
        if left is not None and cost > left:
            continue
        out += [Request(tree, node, limits[node], streams.next_key()) for _ in range(params.bn)]
        left = None if left is None else left - cost
    return out


def branch_requests(trees: list[Tree], streams: list[TreeStreams],
                    params: RolloutParams) -> list[Request]:
    """Rounds 1 .. L-1: the branches of every tree, in tree order."""
    scorer, bparams = get_scorer(params.scorer), params.branch_params()
    return [r for tree, st in zip(trees, streams)
            for r in tree_requests(tree, params, scorer, bparams, st)]


def reward_columns(trees: list[Tree]) -> dict[str, list]:
    """Dataset columns for the reward function: one list per meta key (None where missing)."""
    keys = list(dict.fromkeys(k for t in trees for k in t.meta))
    return {k: [t.meta.get(k) for t in trees] for k in keys}


def score_leaves(pairs: list[tuple[Tree, Node]], reward_fn, decode) -> int:
    """Set the reward of each new leaf; return how many were unscorable (None)."""
    trees = [t for t, _ in pairs]
    completions = [decode(t.response_ids(leaf)) for t, leaf in pairs]
    rewards = list(reward_fn(prompts=[t.prompt for t in trees], completions=completions,
                             **reward_columns(trees)))
    if len(rewards) != len(pairs):
        raise ValueError(f"reward_fn: expected {len(pairs)} rewards, got {len(rewards)}")
    for (_, leaf), r in zip(pairs, rewards):
        leaf.reward = None if r is None else float(r)
        leaf_reward(leaf)  # raises ValueError for NaN or outside [0, 1]
    return sum(r is None for r in rewards)


def run_round(engine, requests: list[Request], ctx: dict, stats: dict) -> None:
    """Generate every request in one engine call, hang the responses, score the new leaves."""
    params: RolloutParams = ctx["params"]
    t0 = time.perf_counter()
    samples = engine.generate([r.tree.prefix_ids(r.node) for r in requests],
                              [r.limit for r in requests], ctx["sampling"],
                              [r.key for r in requests])
    t1 = time.perf_counter()
    pairs = [(r.tree, attach_response(r.tree, r.node, s.token_ids, s.logprobs, s.entropies,
                                      s.stop_reason, ctx["decode"], params.step_delimiter,
                                      params.merge_identical_steps))
             for r, s in zip(requests, samples)]
    stats["rollout/unscorable"] += score_leaves(pairs, ctx["reward_fn"], ctx["decode"])
    stats["rollout/generated_tokens"] += sum(len(s.token_ids) for s in samples)
    stats["time/generate_s"] += t1 - t0
    stats["time/reward_s"] += time.perf_counter() - t1
    stats["rollout/rounds"] += 1


def make_trees(prompts, prompt_texts, metas, tree_keys) -> list[Tree]:
    """One empty tree per prompt; lengths must agree."""
    metas = [{} for _ in prompts] if metas is None else metas
    for name, xs in (("prompt_texts", prompt_texts), ("metas", metas), ("tree_keys", tree_keys)):
        if len(xs) != len(prompts):
            raise ValueError(
                f"{name}: expected {len(prompts)} entries (one per prompt), got {len(xs)}")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompts[{i}]: expected at least one token")
    return [new_tree(p, text, meta) for p, text, meta in zip(prompts, prompt_texts, metas)]


def sample_trees(engine, prompts: list[list[int]], prompt_texts: list[str],
                 metas: list[dict] | None,
                 reward_fn, decode: Callable[[list[int]], str], params: RolloutParams,
                 sampling: SamplingParams, tree_keys: list[int],
                 progress: Callable[[int, int], None] | None = None) -> tuple[list[Tree], dict]:
    """Grow one tree per prompt (ALGORITHM.md §3); return (trees, metrics).

    `tree_keys`: one key per prompt (`ibtpo.seeding.stream_key`), the seed of everything random
    in its tree. `progress(rounds_done, rounds)` is called after each round when given.
    """
    trees = make_trees(prompts, prompt_texts, metas, tree_keys)
    streams = [TreeStreams(int(k)) for k in tree_keys]
    ctx = dict(params=params, sampling=sampling, decode=decode, reward_fn=reward_fn)
    stats = dict.fromkeys(["rollout/generated_tokens", "rollout/unscorable", "rollout/rounds",
                           "rollout/branches", "time/generate_s", "time/reward_s"], 0.0)
    requests = initial_requests(trees, streams, params)
    for round_index in range(params.rounds):
        if round_index > 0:
            requests = branch_requests(trees, streams, params)
            if not requests:
                break
            stats["rollout/branches"] += len(requests)
            for r in requests:
                r.tree.branch_points.append(r.node)
        run_round(engine, requests, ctx, stats)
        if progress is not None:
            progress(round_index + 1, params.rounds)
    assert stats["rollout/generated_tokens"] == sum(t.num_generated_tokens() for t in trees)
    stats["rollout/num_trajectories"] = float(sum(len(t.leaves()) for t in trees))
    return trees, stats
