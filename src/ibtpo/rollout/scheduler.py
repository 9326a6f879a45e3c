"""Tree schedulers: how the rollout's trees share the engine (ALGORITHM.md §3).

Config key: [`rollout.scheduler`].

- `sync` (default): `sampler.sample_trees`, one `engine.generate` call per round over every tree;
  a round waits for its longest continuation before any tree branches again.
- `continuous`: `grow_trees_continuously`, no round barrier. The trees' continuations run in one
  pool of live rows (`ibtpo.rollout.pool.RowPool`); when the last outstanding continuation of a
  tree stops, that tree's new leaves are hung and scored, the tree is scored again at once and
  its next branches join the running batch at the next decode step, while other trees are still
  decoding.

Per tree the two compute the same thing: `b0` initial chains, then up to L - 1 branching rounds,
each chosen from that tree's own current scores (`sampler.tree_requests`: the same candidates,
generation limits, token budget and tie-breaking stream), responses hung in request order, the
same `TreeStreams` numbering of continuation keys; every token is drawn at the uniform of (its
continuation's key, its position), whatever the batch (`ibtpo.rollout.streams`). So both grow
the same trees from the same keys: the same tokens, branch points and rewards; log-probs agree
to the last bits a different batch gives a row's sums (`tests/test_scheduler.py`). One exception:
candidates whose scores are equal in exact arithmetic (sibling steps with identical tokens) are
told apart by those last bits, so the two may branch from different ones of them (4 of 64 trees
on the testbed at 64 prompts per step; docs/PERFORMANCE.md, "Ties break on last bits"). This
holds in fp32; under 16-bit autocast a row batched differently rounds differently enough that a
sampled token can flip (1 of 16 toy trees under bf16).

Metrics: those of `sample_trees` (rollout/rounds is the most rounds any tree ran), plus, for
`continuous` only: rollout/joins (continuations that joined while others were decoding),
rollout/rows_in_flight (mean rows per decode step), rollout/decode_steps; with
`rollout.prefix_cache_mb` > 0 (branch-prefix KV reuse, `ibtpo.rollout.prefix_cache`) also
rollout/prefix_hits (continuations that started from a cached prefix), rollout/prefix_tokens
(the positions they did not re-encode) and rollout/prefix_evicted (entries the cap evicted).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from ibtpo.core.branching import get_scorer
from ibtpo.core.tree import Tree, attach_response
from ibtpo.rollout.engines.contract import Sample, SamplingParams
from ibtpo.rollout.pool import Row, RowPool
from ibtpo.rollout.sampler import (
    Request,
    RolloutParams,
    TreeStreams,
    initial_requests,
    make_trees,
    sample_trees,
    score_leaves,
    tree_requests,
)


@dataclass
class Growth:
    """One tree's progress: rounds done, and the continuations of its round under way."""

    tree: Tree
    streams: TreeStreams
    rounds: int = 0  # rounds whose continuations are all hung and scored
    waiting: list[Request] = field(default_factory=list)  # this round's requests, in order
    samples: dict[int, Sample] = field(default_factory=dict)  # their samples so far, by index
    finished: bool = False  # no further round

    def complete(self) -> bool:
        return len(self.samples) == len(self.waiting)


class ContinuousGrowth:
    """The continuous scheduler's bookkeeping: rows out for each tree, rounds as they close."""

    def __init__(self, trees: list[Tree], tree_keys: list[int], ctx: dict, stats: dict,
                 progress: Callable[[int, int], None] | None):
        self.growths = [Growth(t, TreeStreams(int(k))) for t, k in zip(trees, tree_keys)]
        self.ctx, self.stats, self.progress = ctx, stats, progress
        self.params: RolloutParams = ctx["params"]
        self.scorer, self.bparams = get_scorer(self.params.scorer), self.params.branch_params()
        self.reported = 0
        self.callback_s = 0.0

    def first_rows(self) -> list[Row]:
        """Round 0 of every tree (`sampler.initial_requests`)."""
        requests = initial_requests([g.tree for g in self.growths],
                                    [g.streams for g in self.growths], self.params)
        b0 = self.params.b0
        return [row for i, g in enumerate(self.growths)
                for row in self.post(i, requests[i * b0:(i + 1) * b0])]

    def post(self, i: int, requests: list[Request]) -> list[Row]:
        """Make `requests` tree i's round under way; their rows, tagged (tree, index)."""
        g = self.growths[i]
        g.waiting, g.samples = requests, {}
        return [Row(r.tree.prefix_ids(r.node), r.limit, r.key, (i, j))
                for j, r in enumerate(requests)]

    def on_finish(self, finished: list[tuple[tuple[int, int], Sample]]) -> list[Row]:
        """Record the samples; close the rounds they complete; return the next branches."""
        t0 = time.perf_counter()
        for (i, j), sample in finished:
            self.growths[i].samples[j] = sample
        closing = sorted({i for (i, _), _ in finished if self.growths[i].complete()})
        if closing:
            self.close_rounds(closing)
        rows = [row for i in closing for row in self.next_round(i)]
        self.report_progress()
        self.callback_s += time.perf_counter() - t0
        return rows

    def close_rounds(self, closing: list[int]) -> None:
        """Hang the responses of the trees in `closing` (request order) and score the leaves."""
        p, decode = self.params, self.ctx["decode"]
        pairs = []
        for i in closing:
            g = self.growths[i]
            samples = [g.samples[j] for j in range(len(g.waiting))]
            pairs += [(g.tree, attach_response(g.tree, r.node, s.token_ids, s.logprobs,
                                               s.entropies, s.stop_reason, decode,
                                               p.step_delimiter, p.merge_identical_steps))
                      for r, s in zip(g.waiting, samples)]
            self.stats["rollout/generated_tokens"] += sum(len(s.token_ids) for s in samples)
            g.rounds += 1
        t0 = time.perf_counter()
        self.stats["rollout/unscorable"] += score_leaves(pairs, self.ctx["reward_fn"], decode)
        self.stats["time/reward_s"] += time.perf_counter() - t0

    def next_round(self, i: int) -> list[Row]:
        """Tree i's next branches (`sampler.tree_requests`), or none when it is finished."""
        g = self.growths[i]
        requests = []
        if g.rounds < self.params.rounds:
            requests = tree_requests(g.tree, self.params, self.scorer, self.bparams, g.streams)
        if not requests:
            g.finished = True
            return []
        self.stats["rollout/branches"] += len(requests)
        g.tree.branch_points.extend(r.node for r in requests)
        return self.post(i, requests)

    def report_progress(self) -> None:
        """progress(rounds every tree has done, rounds) at each new level."""
        done = min(self.params.rounds if g.finished else g.rounds for g in self.growths)
        while self.progress is not None and self.reported < done:
            self.reported += 1
            self.progress(self.reported, self.params.rounds)


def grow_trees_continuously(engine, prompts: list[list[int]], prompt_texts: list[str],
                            metas: list[dict] | None, reward_fn,
                            decode: Callable[[list[int]], str], params: RolloutParams,
                            sampling: SamplingParams, tree_keys: list[int],
                            progress: Callable[[int, int], None] | None = None
                            ) -> tuple[list[Tree], dict]:
    """`sampler.sample_trees` without the round barrier (same arguments, same trees; see the
    module docstring). `engine` must be the built-in `TorchEngine` (its model decodes the row
    pool)."""
    trees = make_trees(prompts, prompt_texts, metas, tree_keys)
    ctx = dict(params=params, sampling=sampling, decode=decode, reward_fn=reward_fn)
    stats = dict.fromkeys(["rollout/generated_tokens", "rollout/unscorable", "rollout/rounds",
                           "rollout/branches", "time/generate_s", "time/reward_s"], 0.0)
    growth = ContinuousGrowth(trees, tree_keys, ctx, stats, progress)
    pool = RowPool(engine, params.prefix_cache_mb * 2**20)
    t0 = time.perf_counter()
    run = pool.run(growth.first_rows(), sampling, growth.on_finish)
    stats["time/generate_s"] = time.perf_counter() - t0 - growth.callback_s
    stats["rollout/rounds"] = float(max(g.rounds for g in growth.growths))
    assert stats["rollout/generated_tokens"] == sum(t.num_generated_tokens() for t in trees)
    stats["rollout/num_trajectories"] = float(sum(len(t.leaves()) for t in trees))
    stats["rollout/joins"] = float(run["joins"])
    stats["rollout/decode_steps"] = float(run["decode_steps"])
    stats["rollout/rows_in_flight"] = run["row_steps"] / max(run["decode_steps"], 1)
    if params.prefix_cache_mb:
        stats["rollout/prefix_hits"] = float(run["prefix_hits"])
        stats["rollout/prefix_tokens"] = float(run["prefix_tokens"])
        stats["rollout/prefix_evicted"] = float(run["prefix_evicted"])
    return trees, stats


SCHEDULERS = {"sync": sample_trees, "continuous": grow_trees_continuously}


def get_scheduler(name: str):
    """The tree-growing function of `rollout.scheduler` (one signature: `sample_trees`'s)."""
    if name not in SCHEDULERS:
        raise ValueError(f"rollout.scheduler: got {name!r}, expected one of "
                         f"{', '.join(map(repr, SCHEDULERS))}")
    return SCHEDULERS[name]
