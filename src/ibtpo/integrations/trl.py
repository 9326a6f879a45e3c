"""IB-Score diagnostics of a TRL ``GRPOTrainer`` run (ALGORITHM.md §2; the paper's Figs. 3, 5).

Two lines on top of a user's GRPO script::

    from ibtpo.integrations.trl import add_ib_diagnostics
    add_ib_diagnostics(trainer)          # before trainer.train()

Every generation batch of the trainer then adds, per step, where TRL logs (its log history,
TensorBoard, W&B: TRL's own ``_metrics``, averaged over the logging window):
``ibtpo/ib_score_root``, ``ibtpo/cov_root`` (cov(eta1, eta2) at the root), ``ibtpo/tsallis_root``,
``ibtpo/eff_rate`` and ``ibtpo/avg_rate``. ibtpo computes them with its own functions
(`ibtpo.diagnostics.group_tree` and `group_metrics`, i.e. `ibtpo.metrics.tree_metrics`): each
GRPO group (``num_generations`` consecutive completions of one prompt in training,
``num_generations_eval`` in evaluation, as TRL groups them) is a tree whose root has one chain
per completion, cut into steps at ``step_delimiter``; the root's IB-Score is over the first
steps of the G completions.

Truncated completions under ``mask_truncated_completions=True``: TRL zeroes their mask, so their
tokens are gone from what the hook sees; they are left out of every figure (their group keeps
its other completions; a group left empty is dropped), and ``ibtpo/truncated_left_out`` logs
the share of the batch's completions left out (0 otherwise). Without the option they count as
any completion, with stop reason "length".

Inputs taken from TRL (version 1.16; its private methods, so a later TRL may need an update:
`check_trl` names what changed when the hook is attached, and
tests/test_integrations_trl.py checks them against the installed TRL):
- rewards: `_calculate_rewards` (every reward function, all processes), weighted by TRL's
  ``reward_weights`` as TRL sums them; they must lie in [0, 1] (a correctness reward), or
  `reward_index` picks one reward function; NaN (unscorable) counts as None (0 in p_hat);
- completions: `_generate_and_score_completions`' output (ids, mask);
- per-token log-probs of the sampling policy: TRL's ``old_per_token_logps`` or
  ``sampling_per_token_logps`` when TRL computed them, else one no-grad forward of the model with
  ibtpo's `sequence_logprobs` at TRL's temperature (log softmax(logits / T), as TRL's).
A completion that ends without EOS within ``max_completion_length`` counts as truncated; the EOS
ids are TRL's own ``trainer.eos_token_ids`` (the tokenizer's and the generation config's, also
under TRL's vLLM path), else the tokenizer's EOS and ``trainer.generation_config``'s.
Multi-process runs gather every process's completions first (written for accelerate, tested in
one process only). Not part of the core: nothing in ibtpo imports this module.
"""

from __future__ import annotations

import functools
import inspect
import math

import torch

from ibtpo.diagnostics import Completion, group_metrics, group_tree

PREFIX = "ibtpo/"
TRL_METHODS = {  # GRPOTrainer's private methods the hook wraps, with their parameters (TRL 1.16)
    "_calculate_rewards": ("inputs", "prompts", "completions", "completion_ids_list"),
    "_generate_and_score_completions": ("inputs",),
}
TRL_ATTRIBUTES = ("reward_weights", "num_generations", "temperature", "accelerator",
                  "processing_class", "model", "_metrics")
TRL_OUTPUT_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")


def _trl_version() -> str:
    try:
        import trl
        return trl.__version__
    except ImportError:
        return "not installed"


def check_trl(trainer) -> None:
    """RuntimeError naming the installed TRL version and what changed when `trainer` lacks a
    method (with its parameters) or an attribute the hook reads (`TRL_METHODS`,
    `TRL_ATTRIBUTES`): written for TRL 1.16's private API."""
    problems = []
    for name, params in TRL_METHODS.items():
        method = getattr(type(trainer), name, None)
        got = tuple(inspect.signature(method).parameters)[1:] if callable(method) else None
        if got is None:
            problems.append(f"{name} is missing")
        elif got != params:
            problems.append(f"{name} takes ({', '.join(got)}), not ({', '.join(params)})")
    problems += [f"attribute {a} is missing" for a in TRL_ATTRIBUTES if not hasattr(trainer, a)]
    if problems:
        raise RuntimeError(f"ibtpo.integrations.trl was written for TRL 1.16's GRPOTrainer; "
                           f"TRL {_trl_version()}: {'; '.join(problems)}")


class IBDiagnostics:
    """Computes and logs the IB-Score dynamics of a `trl.GRPOTrainer`'s groups (module
    docstring); `history` keeps one dict of figures per generation batch."""

    def __init__(self, trainer, beta: float = 5.0, prob_norm: str = "mean",
                 step_delimiter: str = "\n\n", reward_index: int | None = None):
        self.trainer, self.beta, self.prob_norm = trainer, beta, prob_norm
        self.delimiter, self.reward_index = step_delimiter, reward_index
        self.history: list[dict] = []
        self.last_groups: list[list[Completion]] = []
        self._rewards: torch.Tensor | None = None

    def attach(self) -> "IBDiagnostics":
        """Wrap the trainer's reward and generation methods (instance attributes only), once
        `check_trl` found what they read."""
        t = self.trainer
        check_trl(t)
        t._calculate_rewards = self._wrap_rewards(t._calculate_rewards)
        t._generate_and_score_completions = self._wrap_generation(t._generate_and_score_completions)
        return self

    def _wrap_rewards(self, inner):
        @functools.wraps(inner)
        def calculate_rewards(*args, **kwargs):
            per_func = inner(*args, **kwargs)  # (N_all, F), every process
            self._rewards = self.combine_rewards(per_func)
            return per_func
        return calculate_rewards

    def _wrap_generation(self, inner):
        @functools.wraps(inner)
        def generate_and_score(inputs):
            output = inner(inputs)
            self.record(output)
            return output
        return generate_and_score

    def combine_rewards(self, per_func: torch.Tensor) -> torch.Tensor:
        """(N,) rewards: one function's (`reward_index`) or TRL's weighted sum; NaN where every
        function returned None."""
        per_func = per_func.detach().float().cpu()
        if self.reward_index is not None:
            return per_func[:, self.reward_index]
        weights = self.trainer.reward_weights.detach().float().cpu()
        total = (per_func * weights[None]).nansum(dim=1)
        return torch.where(torch.isnan(per_func).all(dim=1), torch.nan, total)

    def record(self, output: dict) -> dict | None:
        """The figures of one generation batch, appended to `history` and TRL's metrics."""
        if self._rewards is None:
            return None
        ids, mask, logps = self.gathered(output)
        groups = self.groups(ids, mask, logps, self._rewards)
        self._rewards, self.last_groups = None, groups
        if not groups:  # every completion truncated and masked: nothing to measure
            return None
        tok = self.trainer.processing_class
        tok = getattr(tok, "tokenizer", tok)  # a processor wraps its tokenizer
        trees = [group_tree(g, functools.partial(tok.decode, skip_special_tokens=True),
                            self.delimiter) for g in groups]
        kept = sum(len(g) for g in groups)
        figures = {**group_metrics(trees, self.beta, self.prob_norm),
                   "truncated_left_out": 1.0 - kept / len(ids)}
        self.history.append(figures)
        for key, value in figures.items():
            if key != "prompts":
                self.trainer._metrics[_mode(self.trainer)][PREFIX + key].append(float(value))
        return figures

    def gathered(self, output: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Completion ids, mask and sampling log-probs (N, T) of every process."""
        missing = [k for k in TRL_OUTPUT_KEYS if k not in output]
        if missing:
            raise RuntimeError(f"ibtpo.integrations.trl: TRL {_trl_version()}'s "
                               f"_generate_and_score_completions returned no {', '.join(missing)} "
                               "(TRL 1.16 returns them)")
        logps = output.get("old_per_token_logps")
        if logps is None:
            logps = output.get("sampling_per_token_logps")
        if logps is None:
            logps = self.forward_logprobs(output)
        acc = self.trainer.accelerator
        parts = [output["completion_ids"], output["completion_mask"], logps.float()]
        if acc.num_processes > 1:
            parts = [acc.gather(acc.pad_across_processes(p, dim=1)) for p in parts]
        return tuple(p.detach().cpu() for p in parts)

    def forward_logprobs(self, output: dict) -> torch.Tensor:
        """(N, T) log-probs of the completion tokens under the trainer's model (no gradient),
        at TRL's temperature, with ibtpo's `sequence_logprobs`."""
        from ibtpo.training.logprobs import sequence_logprobs

        prompt_ids, prompt_mask = output["prompt_ids"], output["prompt_mask"]
        ids = torch.cat([prompt_ids, output["completion_ids"]], dim=1)  # (N, P + T)
        mask = torch.cat([prompt_mask, output["completion_mask"]], dim=1)  # (N, P + T)
        with torch.no_grad(), self.trainer.accelerator.autocast():
            logp, _ = sequence_logprobs(self.trainer.model, ids, mask,
                                        self.trainer.temperature, entropy=None)
        return logp[:, prompt_ids.shape[1]:]  # (N, T)

    def groups(self, ids, mask, logps, rewards) -> list[list[Completion]]:
        """Consecutive runs of G completions (TRL's group layout, `group_size`); under
        ``mask_truncated_completions`` the masked (truncated) ones are left out and a group
        left empty is dropped (module docstring)."""
        g, stop_ids = group_size(self.trainer), eos_ids(self.trainer)
        masked = bool(getattr(self.trainer, "mask_truncated_completions", False))
        out = []
        for start in range(0, ids.shape[0] - g + 1, g):
            group = [completion(i, ids, mask, logps, rewards, stop_ids)
                     for i in range(start, start + g) if not (masked and int(mask[i].sum()) == 0)]
            if group:
                out.append(group)
        return out


def completion(i: int, ids, mask, logps, rewards, stop_ids: set[int]) -> Completion:
    """Completion `i` of the batch: its unmasked tokens, their log-probs, its reward (checked in
    [0, 1]; NaN = None) and its stop reason."""
    n = int(mask[i].sum())
    toks, r = ids[i, :n].tolist(), float(rewards[i])
    if not math.isnan(r) and not 0.0 <= r <= 1.0:
        raise ValueError(
            f"ibtpo.integrations.trl: completion {i} has reward {r}, expected [0, 1]: the "
            "IB-Score needs a correctness reward; pass reward_index=k to use the k-th of the "
            "trainer's reward functions")
    return Completion(toks, logps[i, :n].tolist(), None if math.isnan(r) else r,
                      "eos" if toks and toks[-1] in stop_ids else "length")


def _mode(trainer) -> str:
    return "train" if trainer.model.training else "eval"


def group_size(trainer) -> int:
    """G of the batch being generated: ``num_generations`` in training, TRL's
    ``num_generations_eval`` in evaluation (``num_generations`` when it has none)."""
    if _mode(trainer) == "eval":
        return getattr(trainer, "num_generations_eval", None) or trainer.num_generations
    return trainer.num_generations


def eos_ids(trainer) -> set[int]:
    """The token ids that end a TRL completion: TRL's ``trainer.eos_token_ids`` when it has
    them (TRL 1.16: the tokenizer's EOS and the model's generation config's), else the
    tokenizer's EOS and ``trainer.generation_config``'s (absent under TRL's vLLM path)."""
    own = getattr(trainer, "eos_token_ids", None)
    if own is not None:
        return {int(i) for i in own if i is not None}
    tok = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
    ids = {tok.eos_token_id}
    eos = getattr(getattr(trainer, "generation_config", None), "eos_token_id", None)
    ids |= set(eos) if isinstance(eos, (list, tuple)) else {eos}
    return {i for i in ids if i is not None}


def add_ib_diagnostics(trainer, beta: float = 5.0, prob_norm: str = "mean",
                       step_delimiter: str = "\n\n", reward_index: int | None = None
                       ) -> IBDiagnostics:
    """Log the root IB-Score, cov, Tsallis entropy, Eff-Rate and Avg-Rate of every generation
    batch of a `trl.GRPOTrainer` where TRL logs (module docstring); returns the attached
    `IBDiagnostics` (its `history` holds every batch's figures)."""
    return IBDiagnostics(trainer, beta, prob_norm, step_delimiter, reward_index).attach()
