"""Trees -> padded token tensors for the policy update (DESIGN.md "one training step").

Training uses each trajectory as a full sequence, prompt + response (ALGORITHM.md §4): one row per
trajectory, trees in order and each tree's trajectories in `tree.trajectories()` order, so tokens
of a shared prefix appear once per trajectory through it. Every token of step `s` gets the step's
advantage A(s).

Shape letters: N sequences (rows, one per trajectory), T tokens (prompt + response, right-padded).
Alignment: position t of `old_logprobs`, `advantages` and `response_mask` refers to the token
`input_ids[:, t]` (predicted from the logits at t - 1). Prompt and padding positions hold 0 there.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from ibtpo.core.losses import policy_loss
from ibtpo.core.tree import Tree


class RowBatch:
    """What the padded and the packed batch share: rows of tensors that move and slice together
    (fields that are not tensors, such as None or node lists, are carried as they are)."""

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def num_tokens(self) -> int:
        """Token positions one forward over the whole batch runs (padding included)."""
        return int(self.input_ids.numel())

    def _map(self, fn):
        return type(self)(**{f.name: fn(v) if isinstance(v := getattr(self, f.name), torch.Tensor)
                             else v for f in fields(self)})

    def to(self, device):
        """The same batch with every tensor on `device`."""
        return self._map(lambda t: t.to(device))


@dataclass
class Batch(RowBatch):
    """Right-padded prompt + response rows, one per trajectory."""

    input_ids: torch.Tensor  # (N, T) long, pad_token_id after each row's last token
    attention_mask: torch.Tensor  # (N, T) long, 1 on prompt and response tokens
    response_mask: torch.Tensor  # (N, T) float, 1 on response tokens trained on
    old_logprobs: torch.Tensor  # (N, T) float, sampling-policy log-prob of input_ids[:, t]
    advantages: torch.Tensor  # (N, T) float, A(s) of the step holding input_ids[:, t]
    ref_logprobs: torch.Tensor | None = None  # (N, T) float, set by the trainer's reference step

    def slice(self, i: int, j: int) -> "Batch":
        """Rows i..j-1 (a micro-batch); views, no copy."""
        return self._map(lambda t: t[i:j])

    def trained_mask(self) -> torch.Tensor:
        """(N, T) 1 on the tokens trained on (response tokens)."""
        return self.response_mask

    def model_inputs(self, attention: str = "sdpa") -> dict:
        """Keyword arguments of `training.logprobs.sequence_logprobs` for this batch."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}

    def agg_count(self, agg_mode: str) -> torch.Tensor:
        """What `agg_mode` averages over in these rows (the trainer's micro-batch weights)."""
        return agg_count(self.response_mask, agg_mode)

    def loss(self, logprobs, entropy, **loss_kwargs):
        """`core.losses.policy_loss` over these rows."""
        return policy_loss(logprobs, self.old_logprobs, self.advantages, self.response_mask,
                           ref_logprobs=self.ref_logprobs, entropy=entropy, **loss_kwargs)


def agg_count(response_mask: torch.Tensor, agg_mode: str) -> torch.Tensor:
    """What `agg_mode` averages over: trained tokens, rows with a trained token, or rows."""
    if agg_mode == "token-mean":
        return response_mask.sum()
    if agg_mode == "seq-mean-token-mean":
        return (response_mask.sum(-1) > 0).sum()
    return torch.tensor(response_mask.shape[0])


def check_advantages(trees: list[Tree], advantages) -> None:
    """advantages[p][g][k]: one value per step k of trajectory g of tree p, else ValueError."""
    if len(advantages) != len(trees):
        raise ValueError(f"advantages: expected {len(trees)} trees, got {len(advantages)}")
    for p, (tree, adv) in enumerate(zip(trees, advantages)):
        trajs = tree.trajectories()
        if len(adv) != len(trajs):
            raise ValueError(f"advantages[{p}]: expected {len(trajs)} trajectories, got {len(adv)}")
        for g, (traj, a) in enumerate(zip(trajs, adv)):
            if len(a) != len(traj):
                raise ValueError(f"advantages[{p}][{g}]: expected {len(traj)} steps, got {len(a)}")


def trajectory_row(tree: Tree, steps,
                   step_advantages) -> tuple[list[int], list[float], list[float]]:
    """(token ids, old log-probs, advantages) of one prompt + response row, unpadded."""
    n = len(tree.prompt_ids)
    ids, logprobs, adv = list(tree.prompt_ids), [0.0] * n, [0.0] * n
    for step, a in zip(steps, step_advantages):
        ids += step.token_ids
        logprobs += step.logprobs
        adv += [float(a)] * len(step.token_ids)
    return ids, logprobs, adv


def pad_right(rows: list[list], value, width: int) -> list[list]:
    """Each row extended with `value` to `width` entries."""
    return [row + [value] * (width - len(row)) for row in rows]


def zero_advantages(trees: list[Tree]) -> list[list[list[float]]]:
    """advantages[p][g][k] = 0 for every step of every trajectory (a batch built before them)."""
    return [[[0.0] * len(traj) for traj in tree.trajectories()] for tree in trees]


def assign_advantages(batch: Batch, trees: list[Tree], advantages, agg_mode: str | None = None,
                      max_response_len: int | None = None) -> Batch:
    """Set `batch.advantages` (built by `from_trees(trees, None, ...)`); returns the batch.
    (`agg_mode` and `max_response_len` are used by the packed batch only.)"""
    check_advantages(trees, advantages)
    rows = [trajectory_row(tree, traj, a)[2]
            for tree, adv in zip(trees, advantages) for traj, a in zip(tree.trajectories(), adv)]
    width = batch.advantages.shape[1]
    batch.advantages = torch.tensor(pad_right(rows, 0.0, width),
                                    device=batch.advantages.device)  # (N, T)
    return batch


def from_trees(trees: list[Tree], advantages, pad_token_id: int) -> Batch:
    """One right-padded row per trajectory; `advantages[p][g][k]` as the estimators return it
    (None: zeros, to be set by `assign_advantages` once known)."""
    advantages = zero_advantages(trees) if advantages is None else advantages
    check_advantages(trees, advantages)
    rows = [(len(tree.prompt_ids), *trajectory_row(tree, traj, a))
            for tree, adv in zip(trees, advantages) for traj, a in zip(tree.trajectories(), adv)]
    if not rows:
        raise ValueError("trees: expected at least one trajectory")
    width = max(len(ids) for _, ids, _, _ in rows)
    ids = pad_right([r[1] for r in rows], pad_token_id, width)
    attn = pad_right([[1] * len(r[1]) for r in rows], 0, width)
    resp = pad_right([[0.0] * n + [1.0] * (len(i) - n) for n, i, _, _ in rows], 0.0, width)
    return Batch(input_ids=torch.tensor(ids, dtype=torch.long),  # (N, T)
                 attention_mask=torch.tensor(attn, dtype=torch.long),  # (N, T)
                 response_mask=torch.tensor(resp),  # (N, T)
                 old_logprobs=torch.tensor(pad_right([r[2] for r in rows], 0.0, width)),  # (N, T)
                 advantages=torch.tensor(pad_right([r[3] for r in rows], 0.0, width)))  # (N, T)
