"""The engine contract: what every generation backend takes and returns (ALGORITHM.md §3).

The rollout (`ibtpo.rollout.sampler`, `ibtpo.rollout.scheduler`) and the evaluation hand an
engine one flat list of prefixes (prompts, or a prompt plus the steps of a tree node) and get
back one `Sample` per prefix, in order:

    engine.generate(prefixes, max_new_tokens, sampling, keys) -> list[Sample]

- `prefixes`: token ids, each non-empty (prompt ids already encoded, chat template included);
- `max_new_tokens`: one int for all, or one per prefix (>= 0; 0 gives an empty sample);
- `sampling`: `SamplingParams` (temperature, top_p, top_k), the same for every prefix;
- `keys`: one stream key per prefix (63-bit ints, `ibtpo.seeding.stream_key`), required when
  sampling at temperature > 0, unused when greedy. A key names a continuation, not a batch
  slot: a request's sample is a function of (weights, prefix, key, limit, sampling) alone, never
  of the batch, the chunking or the order of requests. How a backend turns a key into tokens is
  its own (`torch`: the inverse CDF at the uniforms of `ibtpo.rollout.streams`; `vllm`: a
  per-request seed derived from the key), so the two backends draw the same distribution but
  not the same tokens.

A `Sample` holds the new tokens only, up to and including the first stop id ("eos"), or
`max_new_tokens` of them ("length"); one log-prob and one entropy per token, those of the
sampling distribution softmax(logits / T) over the full vocabulary, in fp32 (greedy decoding,
T = 0, reports them at T = 1). They are the rollout's `old_logprobs`: the training forward must
give the same numbers up to float error (`tests/test_engine.py`, `tests/test_engine_vllm.py`).

Every backend validates its requests with `check_requests`, `check_keys` and `check_stop_ids`,
so a bad request raises the same ValueError whichever backend runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass
class SamplingParams:
    """How the next token is drawn. `temperature = 0` is greedy decoding."""

    temperature: float = 1.0  # 0 = greedy; log-probs then reported at T = 1
    top_p: float = 1.0  # nucleus mass kept, in (0, 1]; 1 = off
    top_k: int = 0  # tokens kept; 0 = off

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if not self.temperature >= 0:
            raise ValueError(
                f"temperature: expected a number >= 0 (0 = greedy), got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: expected a number in (0, 1], got {self.top_p!r}")
        if self.top_k < 0:
            raise ValueError(f"top_k: expected an integer >= 0 (0 = off), got {self.top_k!r}")


@dataclass
class Sample:
    """One generated continuation (new tokens only)."""

    token_ids: list[int]  # includes the stop token when stop_reason == "eos"
    logprobs: list[float]  # one per token in token_ids
    entropies: list[float]  # one per token in token_ids
    stop_reason: str  # "eos" (a stop id: EOS or end of turn) | "length"




@runtime_checkable
class Engine(Protocol):
    """What the rollout, the schedulers' callers and the evaluation see of a backend."""

    stop_ids: list[int]  # sorted token ids that end a response (EOS, end of turn)

    def generate(self, prefixes: list[list[int]], max_new_tokens: int | list[int],
                 sampling: SamplingParams, keys: list[int] | None = None) -> list[Sample]:
        """One `Sample` per prefix, in order (see the module docstring)."""
        ...


def check_keys(keys, n: int, sampling: SamplingParams, sampled: bool) -> list[int] | None:
    """The stream keys of `n` requests: one int per prefix, required when a token is `sampled`
    at T > 0."""
    if keys is None and (sampling.temperature == 0 or not sampled):
        return None
    if keys is None or len(keys) != n:
        got = "none" if keys is None else f"{len(keys)}"
        raise ValueError(f"keys: sampling at temperature > 0 needs one stream key per prefix "
                         f"({n}; see ibtpo.rollout.streams), got {got}")
    return [int(k) for k in keys]


def check_requests(prefixes, max_new_tokens) -> list[int]:
    """Validate the request list; return one generation limit per prefix."""
    if isinstance(max_new_tokens, int):
        max_new_tokens = [max_new_tokens] * len(prefixes)
    if len(max_new_tokens) != len(prefixes):
        raise ValueError(f"max_new_tokens: expected one entry per prefix ({len(prefixes)}), "
                         f"got {len(max_new_tokens)}")
    for i, (p, m) in enumerate(zip(prefixes, max_new_tokens)):
        if len(p) == 0:
            raise ValueError(f"prefixes[{i}]: expected at least one token, got an empty prefix")
        if m < 0:
            raise ValueError(f"max_new_tokens[{i}]: expected an integer >= 0, got {m!r}")
    return [int(m) for m in max_new_tokens]


def check_stop_ids(stop_ids) -> list[int]:
    """One stop id or a non-empty collection of them, as a sorted list of distinct ints."""
    ids = [stop_ids] if isinstance(stop_ids, int) else list(stop_ids or ())
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError(f"stop_ids: expected a token id or a non-empty list of them, "
                         f"got {stop_ids!r}")
    return sorted(set(ids))
