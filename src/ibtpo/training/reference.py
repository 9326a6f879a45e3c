"""The reference policy's log-probs of every step of a batch of trees (for A_IB with pi_ref).

ALGORITHM.md §4 option `advantage.ib_prob = "ref"`: A_IB uses the reference model's step
probability, as the paper writes pi_ref. One no-grad forward per trajectory row (prompt + response),
in micro-batches; a step shared by several trajectories gets the log-probs of the first row
through it (its prefix, and so its log-probs, are the same in every row).
Shape letters: N rows (trajectories), T tokens.
"""

from __future__ import annotations

import torch

from ibtpo.core.tree import Tree
from ibtpo.training.batch import from_trees
from ibtpo.training.logprobs import sequence_logprobs


@torch.no_grad()
def fill_ref_logprobs(model, trees: list[Tree], pad_token_id: int, temperature: float,
                      micro_batch_size: int) -> None:
    """Set `node.ref_logprobs` (one per token) on every step node of `trees`."""
    batch = from_trees(trees, None, pad_token_id)
    device = next(model.parameters()).device
    rows = []
    for i in range(0, len(batch), micro_batch_size):
        mb = batch.slice(i, i + micro_batch_size).to(device)
        logp, _ = sequence_logprobs(model, mb.input_ids, mb.attention_mask, temperature,
                                    entropy=None)  # (n, T)
        rows += logp.cpu().tolist()
    set_step_logprobs(trees, rows)


def set_step_logprobs(trees: list[Tree], rows: list[list[float]]) -> None:
    """`node.ref_logprobs` of every step from per-token log-prob rows laid out as
    `from_trees(trees, ...)` lays out the trajectories (the first row through a step sets it)."""
    trajectories = [(tree, traj) for tree in trees for traj in tree.trajectories()]
    for (tree, traj), row in zip(trajectories, rows):
        start = len(tree.prompt_ids)
        for step in traj:
            end = start + len(step.token_ids)
            if step.ref_logprobs is None:
                step.ref_logprobs = row[start:end]
            start = end
