"""Tests for ibtpo.training.reference: reference log-probs of every step of a tree."""

import pytest

from ibtpo.core.advantages import AdvParams, get_estimator
from ibtpo.data.rewards import get_reward_fn
from ibtpo.models import encode_prompt
from ibtpo.rollout.engines.contract import SamplingParams
from ibtpo.rollout.engines.torch import TorchEngine as Engine
from ibtpo.rollout.sampler import RolloutParams, sample_trees
from ibtpo.training.reference import fill_ref_logprobs


def test_reference_equal_to_the_sampler_gives_the_sampled_logprobs(tiny_model, char_tokenizer):
    """With the sampling model as reference, every step's reference log-probs equal the log-probs
    recorded while sampling (shared steps included), so A_IB with 'ref' equals A_IB with 'old'.
    Six trees of 5 rounds: over tree keys 6s .. 6s+5, s = 0 .. 19, they hold 2 to 10 non-root
    nodes with several children (mean 4.9), so the shared-step case is always exercised."""
    tok = char_tokenizer
    prompts = ["12+7=?\n", "3+4+5=?\n", "8-3=?\n", "9+9=?\n", "2+5-1=?\n", "6-4=?\n"]
    engine = Engine(tiny_model, tok.eos_token_id, tok.pad_token_id)
    trees, _ = sample_trees(engine, [encode_prompt(tok, p) for p in prompts], prompts,
                            [{"answer": "0"}] * 6, get_reward_fn("arithmetic"),
                            lambda ids: tok.decode(ids, skip_special_tokens=True),
                            RolloutParams(b0=2, rounds=5, max_new_tokens=24, step_delimiter="1"),
                            SamplingParams(temperature=0.8), list(range(6)))
    fill_ref_logprobs(tiny_model, trees, tok.pad_token_id, temperature=0.8, micro_batch_size=3)
    steps = [n for t in trees for n in t.nodes() if n is not t.root]
    assert any(len(n.children) > 1 for t in trees for n in t.nodes() if n is not t.root)
    for n in steps:
        assert n.ref_logprobs == pytest.approx(n.logprobs, abs=1e-4)
    old, _ = get_estimator("ibtpo")(trees, AdvParams(ib_prob="old"))
    ref, _ = get_estimator("ibtpo")(trees, AdvParams(ib_prob="ref"))
    for a, b in zip(old, ref):
        for x, y in zip(a, b):
            assert x == pytest.approx(y, abs=1e-4)
