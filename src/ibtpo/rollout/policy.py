"""A policy ready to sample: model, tokenizer, generation engine and reward function.

What rollouts, evaluations and diagnostics need from a checkpoint, built from one config.
"""

from __future__ import annotations

import contextlib
import copy

import torch

from ibtpo.config import Config
from ibtpo.data.rewards import (
    RewardSet,
    RewardTransform,
    load_reward_fn,
    reward_set_of,
    task_reward_spec,
)
from ibtpo.evaluation import evaluate
from ibtpo.inputs import check_prompt_lengths
from ibtpo.models import load_model, prompt_encoder, resolve_device
from ibtpo.rollout.engines import build_engine
from ibtpo.rollout.engines.contract import SamplingParams
from ibtpo.rollout.sampler import RolloutParams
from ibtpo.rollout.scheduler import get_scheduler


def rollout_params(cfg: Config) -> RolloutParams:
    r = cfg.rollout
    independent = r.scorer == "independent"
    return RolloutParams(
        scorer=r.scorer, b0=r.b0, rounds=1 if independent else r.rounds, k=r.k, bn=r.bn,
        max_new_tokens=cfg.sampling.max_new_tokens, step_delimiter=r.step_delimiter,
        merge_identical_steps=r.merge_identical_steps, branch_from_root=r.branch_from_root,
        beta=cfg.advantage.beta, prob_norm=r.prob_norm, token_budget=r.token_budget,
        prefix_cache_mb=r.prefix_cache_mb)


def sampling_params(cfg: Config) -> SamplingParams:
    s = cfg.sampling
    return SamplingParams(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k)


def reward_set(cfg: Config, reward_funcs=None) -> RewardSet:
    """The reward of `task.reward` (with `task.reward_weights`), or the given function(s): a
    `RewardSet`, one function, or a list of functions (equal weights); rewards are checked in
    [0, 1] or mapped there by `task.reward_transform` (`ibtpo.data.rewards.RewardTransform`)."""
    transform = RewardTransform.of(cfg.task)
    if reward_funcs is None:
        return load_reward_fn(task_reward_spec(cfg.task), cfg.task.reward_weights, transform)
    if isinstance(reward_funcs, RewardSet):
        reward_funcs = copy.copy(reward_funcs)  # the caller's set keeps its own transform
        reward_funcs.transform = transform
        return reward_funcs
    return reward_set_of(reward_funcs, transform=transform)


class Policy:
    """A model, its tokenizer and a generation engine over it: what rollouts and evals need.

    Prompts are encoded with the chat template when `model.chat_template` is on; generation stops
    at every stop id of the tokenizer and the model (`ibtpo.models.stop_token_ids`). The reward
    is `task.reward`, or `reward_funcs` (one function in TRL's shape, or a list) when given.
    """

    def __init__(self, cfg: Config, model_path: str, reward_funcs=None):
        if cfg.model.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"model.device: got {cfg.model.device!r}, but CUDA is not available")
        self.device = resolve_device(cfg.model.device)
        self.model, self.tokenizer = load_model(model_path, str(self.device), cfg.model.dtype,
                                                trust_remote_code=cfg.model.trust_remote_code)
        self.model.eval()
        self.encode = prompt_encoder(self.tokenizer, cfg.model.chat_template,
                                     cfg.model.system_prompt)
        self.reward_fn = reward_set(cfg, reward_funcs)
        self.engine = build_engine(cfg, self.model, self.tokenizer)  # rollout.engine
        self.autocast_dtype: torch.dtype | None = None  # sampling's autocast (set by Trainer)

    def replace_model(self, model) -> None:
        """Sample from `model` from now on (e.g. the same model with LoRA adapters)."""
        self.model = self.engine.model = model

    def reward_metrics(self) -> dict:
        """Per-function reward metrics since the last call (a reward set's; {} otherwise)."""
        pop = getattr(self.reward_fn, "pop_metrics", None)
        return pop() if pop is not None else {}

    def compute(self):
        """The context every generation runs in: autocast to `autocast_dtype` (fp32 master
        weights with 16-bit compute, `ibtpo.training.precision`), or nothing when None."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def check_prompts(self, problems, max_new_tokens: int, source: str) -> None:
        """ValueError naming `source` when a prompt plus `max_new_tokens` exceeds the context."""
        check_prompt_lengths(problems, self.encode,
                             self.model, max_new_tokens, source)

    def grow_trees(self, cfg: Config, problems, tree_keys: list[int]):
        """One tree per problem (ALGORITHM.md §3), each grown from its key (`tree_keys`, e.g.
        `ibtpo.seeding.stream_key(seed, step, prompt index)`); returns (trees, metrics)."""
        prompts = [self.encode(p.prompt) for p in problems]
        metas = [p.columns() for p in problems]
        grow = get_scheduler(cfg.rollout.scheduler)  # sampler.sample_trees unless 'continuous'
        with self.compute():
            trees, metrics = grow(self.engine, prompts, [p.prompt for p in problems], metas,
                                  self.reward_fn, self.decode, rollout_params(cfg),
                                  sampling_params(cfg), tree_keys)
        return trees, {**metrics, **self.reward_metrics()}

    def evaluate(self, cfg: Config, problems, seed: int) -> dict:
        with self.compute():
            res = evaluate(self.model, self.tokenizer, problems, self.reward_fn, engine=self.engine,
                           k=cfg.eval.k, temperature=cfg.eval.temperature,
                           max_new_tokens=cfg.sampling.max_new_tokens,
                           batch_size=cfg.eval.batch_size, seed=seed, encode=self.encode,
                           top_p=cfg.eval.top_p, top_k=cfg.eval.top_k)
        self.reward_metrics()  # evaluation rewards are not rollout statistics
        return {"eval/pass@1": res["pass@1"], "eval/avg@k": res[f"avg@{cfg.eval.k}"],
                **{f"eval/{key}": v for key, v in res.items() if key.startswith("sampled_pass@")}}
