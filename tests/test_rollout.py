"""Tests for ibtpo.rollout: G = B0 + (L-1)·K·Bn, token accounting, budget, limits, rewards."""


import pytest
import torch
import torch.nn.functional as F

from ibtpo.core.branching import SCORERS, get_scorer
from ibtpo.core.tree import add_step, new_tree
from ibtpo.rollout.engines.contract import SamplingParams
from ibtpo.rollout.engines.torch import TorchEngine as Engine
from ibtpo.rollout.sampler import RolloutParams, TreeStreams, sample_trees, tree_requests
from ibtpo.seeding import stream_key
from ibtpo.training.batch import from_trees
from toy import BOS, EOS, PAD, random_llama

PROMPTS = [[BOS, 12, 13], [BOS, 20, 21, 22, 23], [BOS, 30]]
TEXTS = ["p0", "p1", "p2"]
METAS = [{"answer": "0"}, {"answer": "1"}, {"answer": "2"}]


def decode(ids: list[int]) -> str:
    """Ids 0-2 (pad, bos, eos) -> "", 3-9 -> "\\n" (so "\\n\\n" steps happen), others letters."""
    return "".join("" if i < 3 else "\n" if i < 10 else chr(ord("a") + i - 10) for i in ids)


def reward_fn(prompts, completions, answer, **_):
    """1.0 for an even number of characters, 0.0 for odd, None when it starts with "b"."""
    assert len(prompts) == len(completions) == len(answer)
    return [None if c.startswith("b") else float(len(c) % 2 == 0) for c in completions]


class CountingEngine:
    """Wraps an Engine; records each generate call's request count and generated tokens."""

    def __init__(self, engine):
        self.engine, self.calls, self.tokens = engine, [], 0

    def generate(self, prefixes, max_new_tokens, sampling, keys=None):
        samples = self.engine.generate(prefixes, max_new_tokens, sampling, keys)
        self.calls.append(len(prefixes))
        self.tokens += sum(len(s.token_ids) for s in samples)
        return samples


@pytest.fixture(scope="module")
def model():
    return random_llama(0)


def keys(seed: int) -> list[int]:
    """One tree key per prompt of PROMPTS."""
    return [stream_key(seed, "test", i) for i in range(len(PROMPTS))]


def grow(model, seed=0, sampling=None, **kw):
    params = RolloutParams(**{"max_new_tokens": 16, **kw})
    engine = CountingEngine(Engine(model, EOS, PAD))
    trees, metrics = sample_trees(engine, PROMPTS, TEXTS, METAS, reward_fn, decode, params,
                                  sampling or SamplingParams(), keys(seed))
    return trees, metrics, engine


@pytest.mark.parametrize("scorer", ["ib", "entropy", "random", "width"])
def test_trajectory_count_and_one_call_per_round(model, scorer):
    """(b0, L, k, bn) = (3, 4, 1, 2): G = 3 + 3·1·2 = 9 per tree (the root always has room)."""
    trees, metrics, engine = grow(model, scorer=scorer, b0=3, rounds=4, k=1, bn=2)
    assert [len(t.leaves()) for t in trees] == [9, 9, 9]
    assert metrics["rollout/num_trajectories"] == 27
    assert engine.calls == [9, 6, 6, 6]  # each round batched over the 3 prompts
    assert metrics["rollout/rounds"] == 4 and metrics["rollout/branches"] == 18
    for t in trees:  # every branch recorded with the node it starts from (bn = 2 per pick)
        assert len(t.branch_points) == 6 and all(not n.terminal for n in t.branch_points)
        assert t.branch_points[0::2] == t.branch_points[1::2]


def test_trajectory_count_with_k_two(model):
    """(4, 3, 2, 1): G = 4 + 2·2·1 = 8 when every tree has >= 2 candidates. Steps end at "\\n"
    (7 of 40 ids), so the 4 chains of 24 tokens almost surely hold non-terminal steps."""
    trees, _, engine = grow(model, scorer="ib", b0=4, rounds=3, k=2, bn=1, max_new_tokens=24,
                            step_delimiter="\n")
    assert [len(t.leaves()) for t in trees] == [8, 8, 8]
    assert engine.calls == [12, 6, 6]


def test_independent_scorer_samples_b0_chains_only(model):
    trees, metrics, engine = grow(model, scorer="independent", b0=5, rounds=9)
    assert [len(t.leaves()) for t in trees] == [5, 5, 5]
    assert engine.calls == [15]
    assert metrics["rollout/rounds"] == 1 and metrics["rollout/branches"] == 0


@pytest.mark.parametrize("scorer", sorted(SCORERS))
def test_token_accounting_is_exact(model, scorer):
    trees, metrics, engine = grow(model, scorer=scorer, b0=2, rounds=5, k=1, bn=1)
    per_tree = [t.num_generated_tokens() for t in trees]
    assert metrics["rollout/generated_tokens"] == engine.tokens == sum(per_tree)
    # and equal to the tokens of the distinct step nodes (no merging here)
    assert per_tree == [sum(len(n.token_ids) for n in t.nodes()) for t in trees]


def test_token_budget_is_never_exceeded(model):
    """b0·max = 2·16 = 32 <= budget 60: a tree branches while a pick's worst case fits."""
    trees, metrics, _ = grow(model, scorer="ib", b0=2, rounds=9, k=1, bn=1, token_budget=60)
    for t in trees:
        assert t.num_generated_tokens() <= 60
        assert len(t.leaves()) > 2  # some branching happened
    assert metrics["rollout/generated_tokens"] <= 3 * 60


def test_budget_smaller_than_initial_chains_raises():
    with pytest.raises(ValueError, match="token_budget"):
        RolloutParams(b0=4, max_new_tokens=16, token_budget=63)


def test_every_trajectory_respects_max_new_tokens(model):
    trees, _, _ = grow(model, scorer="random", b0=2, rounds=6, k=1, bn=2, max_new_tokens=10)
    for t in trees:
        for leaf in t.leaves():
            ids = t.response_ids(leaf)
            assert len(ids) <= 10
            if leaf.stop_reason == "length":
                assert len(ids) == 10  # a branch's limit is what its prefix left
            else:
                assert leaf.stop_reason == "eos" and ids[-1] == EOS and EOS not in ids[:-1]


def test_steps_tile_each_response(model):
    """Steps concatenate to the response; every step but the last ends at its first "\\n\\n"."""
    trees, _, _ = grow(model, scorer="ib", b0=3, rounds=5, max_new_tokens=24)
    n_multi_step = 0
    for t in trees:
        for traj in t.trajectories():
            leaf = traj[-1]
            assert sum((s.token_ids for s in traj), []) == t.response_ids(leaf)
            assert "".join(decode(s.token_ids) for s in traj) == decode(t.response_ids(leaf))
            for s in traj[:-1]:
                text = decode(s.token_ids)
                assert text.endswith("\n\n") and text.find("\n\n") == len(text) - 2
                assert not s.terminal
            assert leaf.terminal and all(len(s.logprobs) == len(s.token_ids) for s in traj)
            n_multi_step += len(traj) > 1
    assert n_multi_step > 0


def test_old_logprobs_equal_a_training_forward(model):
    """Tree log-probs (branches sampled from cached prefixes) match a full forward at T = 0.8."""
    trees, _, _ = grow(model, scorer="ib", b0=2, rounds=4, sampling=SamplingParams(temperature=0.8))
    adv = [[[0.0] * len(traj) for traj in t.trajectories()] for t in trees]
    b = from_trees(trees, adv, PAD)
    with torch.no_grad():
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits  # (N, T, V)
    logp = F.log_softmax(logits[:, :-1] / 0.8, -1).gather(-1, b.input_ids[:, 1:, None])[..., 0]
    mask = b.response_mask[:, 1:].bool()
    torch.testing.assert_close(logp[mask], b.old_logprobs[:, 1:][mask], atol=1e-4, rtol=0)


def test_rewards_scored_and_unscorable_counted(model):
    trees, metrics, _ = grow(model, scorer="ib", b0=3, rounds=4)
    expected = [reward_fn(["p"], [decode(t.response_ids(leaf))], ["a"])[0]
                for t in trees for leaf in t.leaves()]
    assert [leaf.reward for t in trees for leaf in t.leaves()] == expected
    assert metrics["rollout/unscorable"] == sum(r is None for r in expected)


def test_bad_reward_length_raises(model):
    params = RolloutParams(b0=2, rounds=1, max_new_tokens=4)
    with pytest.raises(ValueError, match="reward_fn"):
        sample_trees(Engine(model, EOS, PAD), PROMPTS, TEXTS, METAS, lambda **kw: [1.0], decode,
                     params, SamplingParams(), keys(0))


def test_same_seeds_same_trees(model):
    def tokens(trees):
        return [[t.response_ids(leaf) for leaf in t.leaves()] for t in trees]

    a, _, _ = grow(model, seed=3, scorer="random", rounds=4)
    b, _, _ = grow(model, seed=3, scorer="random", rounds=4)
    assert tokens(a) == tokens(b)


def test_zero_max_new_tokens_gives_empty_leaves_and_no_branching(model):
    trees, metrics, _ = grow(model, scorer="ib", b0=2, rounds=5, max_new_tokens=0)
    assert [len(t.leaves()) for t in trees] == [2, 2, 2]
    assert metrics["rollout/generated_tokens"] == 0


def test_nodes_without_room_are_not_branched():
    """A non-terminal step that used all max_new_tokens = 3 tokens is dropped; the root remains."""
    tree = new_tree([BOS, 5])
    full = add_step(tree, tree.root, [10, 3, 3], [-1.0] * 3, [1.0] * 3)
    add_step(tree, full, [], [], [], terminal=True, stop_reason="length", reward=1.0)
    params = RolloutParams(scorer="width", max_new_tokens=3, k=2, bn=1)
    reqs = tree_requests(tree, params, get_scorer("width"), params.branch_params(),
                         TreeStreams(0))
    assert [(r.node is tree.root, r.limit) for r in reqs] == [(True, 3)]


def test_progress_callback_sees_each_round(model):
    seen = []
    params = RolloutParams(b0=2, rounds=3, max_new_tokens=4)
    sample_trees(Engine(model, EOS, PAD), PROMPTS, TEXTS, METAS, reward_fn, decode, params,
                 SamplingParams(), keys(0), progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize("kwargs, name", [
    (dict(scorer="nope"), "scorer"), (dict(b0=0), "b0"), (dict(rounds=0), "rounds"),
    (dict(bn=0), "bn"), (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(step_delimiter=""), "step_delimiter"),
])
def test_bad_params_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        RolloutParams(**kwargs)


def test_mismatched_inputs_raise(model):
    with pytest.raises(ValueError, match="prompt_texts"):
        sample_trees(Engine(model, EOS, PAD), PROMPTS, TEXTS[:2], METAS, reward_fn, decode,
                     RolloutParams(), SamplingParams(), keys(0))


def test_a_tree_grows_the_same_whatever_trees_share_its_batch(model):
    """Each tree's randomness comes from its key: the three trees grown together equal each grown
    alone, and in reverse order (what a scheduler that runs trees apart relies on)."""
    params = RolloutParams(max_new_tokens=16, scorer="random", b0=2, rounds=4)
    k = keys(5)

    def run(idx):
        trees, _ = sample_trees(Engine(model, EOS, PAD), [PROMPTS[i] for i in idx],
                                [TEXTS[i] for i in idx], [METAS[i] for i in idx], reward_fn,
                                decode, params, SamplingParams(), [k[i] for i in idx])
        return {i: ([t.response_ids(leaf) for leaf in t.leaves()],
                    [n.depth for n in t.branch_points]) for i, t in zip(idx, trees)}

    together = run([0, 1, 2])
    assert run([2, 1, 0]) == together
    assert {**run([0]), **run([1]), **run([2])} == together
    assert together[0] != together[1]
