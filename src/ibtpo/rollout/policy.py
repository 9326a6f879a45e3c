"""A policy ready to sample: model, tokenizer, generation engine and reward function.

What rollouts, evaluations and diagnostics need from a checkpoint, built from one config.
"""

from __future__ import annotations

import random

import torch

from ibtpo.config import Config
from ibtpo.data.rewards import get_reward_fn
from ibtpo.evaluation import evaluate
from ibtpo.inputs import check_prompt_lengths
from ibtpo.models import encode_prompt, load_model, resolve_device
from ibtpo.rollout.engine import Engine, SamplingParams
from ibtpo.rollout.sampler import RolloutParams, sample_trees


def rollout_params(cfg: Config) -> RolloutParams:
    r = cfg.rollout
    independent = r.scorer == "independent"
    return RolloutParams(
        scorer=r.scorer, b0=r.b0, rounds=1 if independent else r.rounds, k=r.k, bn=r.bn,
        max_new_tokens=cfg.sampling.max_new_tokens, step_delimiter=r.step_delimiter,
        merge_identical_steps=r.merge_identical_steps, branch_from_root=r.branch_from_root,
        beta=cfg.advantage.beta, prob_norm=r.prob_norm, token_budget=r.token_budget)


def sampling_params(cfg: Config) -> SamplingParams:
    s = cfg.sampling
    return SamplingParams(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k)


class Policy:
    """A model, its tokenizer and a generation engine over it: what rollouts and evals need."""

    def __init__(self, cfg: Config, model_path: str):
        if cfg.model.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"model.device: got {cfg.model.device!r}, but CUDA is not available")
        self.device = resolve_device(cfg.model.device)
        self.model, self.tokenizer = load_model(model_path, str(self.device), cfg.model.dtype,
                                                trust_remote_code=cfg.model.trust_remote_code)
        self.model.eval()
        self.reward_fn = get_reward_fn(cfg.task.reward)
        self.engine = Engine(self.model, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id,
                             batch_size=cfg.eval.batch_size)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def check_prompts(self, problems, max_new_tokens: int, source: str) -> None:
        """ValueError naming `source` when a prompt plus `max_new_tokens` exceeds the context."""
        check_prompt_lengths(problems, lambda text: encode_prompt(self.tokenizer, text),
                             self.model, max_new_tokens, source)

    def grow_trees(self, cfg: Config, problems, rng: random.Random, generator: torch.Generator):
        """One tree per problem (ALGORITHM.md §3); returns (trees, metrics)."""
        prompts = [encode_prompt(self.tokenizer, p.prompt) for p in problems]
        metas = [p.columns() for p in problems]
        return sample_trees(self.engine, prompts, [p.prompt for p in problems], metas,
                            self.reward_fn, self.decode, rollout_params(cfg),
                            sampling_params(cfg), rng, generator)

    def evaluate(self, cfg: Config, problems, seed: int) -> dict:
        res = evaluate(self.model, self.tokenizer, problems, self.reward_fn,
                       k=cfg.eval.k, temperature=cfg.eval.temperature,
                       max_new_tokens=cfg.sampling.max_new_tokens,
                       batch_size=cfg.eval.batch_size, seed=seed)
        return {"eval/pass@1": res["pass@1"], "eval/avg@k": res[f"avg@{cfg.eval.k}"]}
