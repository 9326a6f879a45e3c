"""Tests for ibtpo.rollout.scheduler and ibtpo.rollout.pool: the continuous scheduler grows the
trees the synchronous one grows; a row that joins a running batch computes what it computes alone.

Tolerance of floats (log-probs, entropies): 1e-5. A row's tokens are the same bits in any batch
(per-row streams), but its logits are not: another batch shape or another number of (masked) keys
changes the summation order of the matmuls and of the attention's sums, a few ulp of fp32 per op
(measured here: at most 5e-7 on log-probs of magnitude < 10). 1e-5 is 20x that, the tolerance
test_engine.py uses between chunkings, and far below any real difference (a wrong position id or
an unmasked pad moves log-probs by > 1e-2). Tokens, branch points and rewards are compared exactly
(a token would differ only if its uniform fell within those ulp of a CDF boundary: ~1e-6 per token).
"""

import pytest
import torch
import torch.nn.functional as F

from ibtpo.config import ConfigError, load_config
from ibtpo.rollout.engines.contract import SamplingParams
from ibtpo.rollout.engines.kv_cache import extend, prefill
from ibtpo.rollout.engines.torch import TorchEngine as Engine
from ibtpo.rollout.pool import Row, RowPool, trim_left
from ibtpo.rollout.sampler import RolloutParams, sample_trees
from ibtpo.rollout.scheduler import get_scheduler, grow_trees_continuously
from ibtpo.seeding import stream_key
from toy import BOS, EOS, PAD, VOCAB, random_llama

# prompts of very different lengths, so that caches are left-padded and left-extended at joins
PROMPTS = [[BOS, 12, 13], [BOS] + list(range(14, 33)), [BOS, 30], [BOS, 20, 21, 22, 23, 24, 25]]
TEXTS = [f"p{i}" for i in range(len(PROMPTS))]
METAS = [{"answer": str(i)} for i in range(len(PROMPTS))]
TOL = 1e-5  # see the module docstring


def decode(ids: list[int]) -> str:
    """Ids 0-2 (pad, bos, eos) -> "", 3-9 -> "\\n" (so "\\n\\n" steps happen), others letters."""
    return "".join("" if i < 3 else "\n" if i < 10 else chr(ord("a") + i - 10) for i in ids)


def reward_fn(prompts, completions, answer, **_):
    """1.0 for an even number of characters, 0.0 for odd, None when it starts with "b"."""
    assert len(prompts) == len(completions) == len(answer)
    return [None if c.startswith("b") else float(len(c) % 2 == 0) for c in completions]


@pytest.fixture(scope="module")
def model():
    """The random tiny Llama (tests/toy.py): EOS is one id of 40, so responses stop at very
    different lengths."""
    return random_llama(0)


def tree_keys(seed: int) -> list[int]:
    return [stream_key(seed, "scheduler-test", i) for i in range(len(PROMPTS))]


def grow(grow_fn, model, seed=0, **kw):
    params = RolloutParams(**{"max_new_tokens": 24, **kw})
    return grow_fn(Engine(model, EOS, PAD), PROMPTS, TEXTS, METAS, reward_fn, decode, params,
                   SamplingParams(), tree_keys(seed))


def assert_same_trees(a, b) -> None:
    """Same nodes in pre-order (tokens, stop reasons, rewards exactly; floats within TOL) and the
    same branch points in order."""
    for ta, tb in zip(a, b, strict=True):
        na, nb = ta.nodes(), tb.nodes()
        assert [(n.depth, n.token_ids, n.terminal, n.stop_reason, n.reward) for n in na] == \
               [(n.depth, n.token_ids, n.terminal, n.stop_reason, n.reward) for n in nb]
        assert [na.index(n) for n in ta.branch_points] == [nb.index(n) for n in tb.branch_points]
        for x, y in zip(na, nb):
            torch.testing.assert_close(torch.tensor(x.logprobs), torch.tensor(y.logprobs),
                                       atol=TOL, rtol=0)
            torch.testing.assert_close(torch.tensor(x.entropies), torch.tensor(y.entropies),
                                       atol=TOL, rtol=0)


SAME_KEYS = ("rollout/generated_tokens", "rollout/unscorable", "rollout/rounds",
             "rollout/branches", "rollout/num_trajectories")


@pytest.mark.parametrize("kw, joins", [
    (dict(scorer="ib", b0=2, rounds=5), True),
    (dict(scorer="ib", b0=2, rounds=9, token_budget=80), True),
    (dict(scorer="random", b0=2, rounds=4, k=2, bn=2, branch_from_root=True), True),
    (dict(scorer="independent", b0=6, rounds=1), False),
])
def test_both_schedulers_grow_the_same_trees(model, kw, joins):
    """IB-TPO, with a token budget, k = bn = 2, and GRPO's independent sampling."""
    sync, ms = grow(sample_trees, model, **kw)
    cont, mc = grow(grow_trees_continuously, model, **kw)
    assert_same_trees(sync, cont)
    assert {k: ms[k] for k in SAME_KEYS} == {k: mc[k] for k in SAME_KEYS}
    assert (mc["rollout/joins"] > 0) == joins  # branches really joined a running batch
    assert mc["rollout/decode_steps"] > 0 and mc["rollout/rows_in_flight"] >= 1
    if kw.get("token_budget"):
        assert all(t.num_generated_tokens() <= kw["token_budget"] for t in cont)


def test_continuous_trees_are_those_of_each_tree_grown_alone(model):
    """Tree 1 grown alone by the synchronous scheduler equals tree 1 grown among all four."""
    params = RolloutParams(max_new_tokens=24, scorer="ib", b0=2, rounds=5)
    alone, _ = sample_trees(Engine(model, EOS, PAD), PROMPTS[1:2], TEXTS[1:2], METAS[1:2],
                            reward_fn, decode, params, SamplingParams(), tree_keys(0)[1:2])
    together, _ = grow(grow_trees_continuously, model, scorer="ib", b0=2, rounds=5)
    assert_same_trees(alone, together[1:2])


def test_small_batch_and_greedy_and_progress(model):
    """batch_size 3 (rows queue for room), greedy decoding, and progress once per round level."""
    seen = []
    params = RolloutParams(max_new_tokens=12, scorer="ib", b0=2, rounds=3)
    sync, _ = sample_trees(Engine(model, EOS, PAD), PROMPTS, TEXTS, METAS, reward_fn, decode,
                           params, SamplingParams(temperature=0), tree_keys(1))
    cont, _ = grow_trees_continuously(Engine(model, EOS, PAD, batch_size=3), PROMPTS, TEXTS,
                                      METAS, reward_fn, decode, params,
                                      SamplingParams(temperature=0), tree_keys(1),
                                      progress=lambda d, n: seen.append((d, n)))
    assert_same_trees(sync, cont)
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_zero_max_new_tokens(model):
    trees, m = grow(grow_trees_continuously, model, scorer="ib", b0=2, rounds=5, max_new_tokens=0)
    assert [len(t.leaves()) for t in trees] == [2] * len(PROMPTS)
    assert m["rollout/generated_tokens"] == 0 and m["rollout/rounds"] == 1


# ----------------------------------------------------------------------------- the row pool


def full_logprobs(model, prefix, tokens) -> torch.Tensor:
    """Log-probs at T = 1 of `tokens` after `prefix`, one full forward without a cache."""
    with torch.no_grad():
        logits = model(torch.tensor([prefix + tokens])).logits[0].float()
    logp = F.log_softmax(logits[len(prefix) - 1:-1], -1)
    return logp.gather(-1, torch.tensor(tokens)[:, None])[:, 0]


@pytest.mark.parametrize("drop_fraction, batch_size", [(0.25, 256), (0.0, 256), (1.0, 2)])
def test_a_joined_row_computes_what_it_computes_alone(model, drop_fraction, batch_size):
    """Rows A (9-token prefix, 14 tokens) and B (2 tokens, 3 tokens) start; when B stops, C (a
    25-token prefix: longer than the cache, which is left-extended) and D (1 token) join while A
    is decoding; when C stops, E joins. Each row's sample equals the engine's for it alone
    (tokens exactly, log-probs within TOL) and a full forward's log-probs."""
    rows = {"A": Row([BOS] + list(range(3, 11)), 14, 11, "A"), "B": Row([BOS, 5], 3, 12, "B"),
            "C": Row([BOS] + list(range(10, 34)), 6, 13, "C"), "D": Row([BOS], 9, 14, "D"),
            "E": Row([BOS, 7, 7, 7], 5, 15, "E")}
    after = {"B": ["C", "D"], "C": ["E"]}
    got = {}

    def on_finish(finished):
        got.update(finished)
        return [rows[n] for tag, _ in finished for n in after.get(tag, [])]

    engine = Engine(model, [VOCAB + 7], PAD, batch_size=batch_size, drop_fraction=drop_fraction)
    stats = RowPool(engine).run([rows["A"], rows["B"]], SamplingParams(), on_finish)
    assert sorted(got) == list("ABCDE")
    assert stats["joins"] == 3 and stats["max_rows"] <= batch_size
    for name, r in rows.items():
        alone = Engine(model, [VOCAB + 7], PAD).generate([r.prefix], r.limit, SamplingParams(),
                                                         [r.key])[0]
        assert got[name].token_ids == alone.token_ids and len(alone.token_ids) == r.limit
        torch.testing.assert_close(torch.tensor(got[name].logprobs),
                                   torch.tensor(alone.logprobs), atol=TOL, rtol=0)
        ref = full_logprobs(model, r.prefix, alone.token_ids)
        torch.testing.assert_close(torch.tensor(got[name].logprobs), ref, atol=1e-4, rtol=0)


def test_trim_left_drops_common_padding_and_keeps_logits(model):
    """Prefixes of 12 and 3 tokens; the long row leaves: 9 columns of padding go, and the next
    step's logits of the short row equal a full forward's."""
    long, short = [BOS] + list(range(3, 14)), [BOS, 20, 21]
    with torch.no_grad():
        _, state = prefill(model, [long, short], PAD, 4)
        state.select(torch.tensor([1]))
        assert trim_left(state) == 9 and state.attention_mask.shape == (1, 3)
        logits = extend(model, state, torch.tensor([22]))
        ref = model(torch.tensor([short + [22]])).logits[0, -1]
    torch.testing.assert_close(logits[0], ref, atol=1e-5, rtol=0)


def test_the_pool_needs_the_built_in_engine_and_keys(model):
    class Wrapper:
        def generate(self, *a, **k):
            raise AssertionError

    with pytest.raises(ValueError, match="rollout.scheduler"):
        RowPool(Wrapper())
    with pytest.raises(ValueError, match="keys"):
        RowPool(Engine(model, EOS, PAD)).run([Row([BOS], 2, None)], SamplingParams(),
                                             lambda f: [])


def test_the_config_field_selects_the_scheduler():
    assert load_config().rollout.scheduler == "sync"
    assert get_scheduler("sync") is sample_trees
    assert get_scheduler(load_config(overrides=["rollout.scheduler=continuous"])
                         .rollout.scheduler) is grow_trees_continuously
    with pytest.raises(ConfigError, match="rollout.scheduler"):
        load_config(overrides=["rollout.scheduler=eager"])
    with pytest.raises(ValueError, match="rollout.scheduler"):
        get_scheduler("eager")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_both_schedulers_grow_the_same_trees(model):
    """On CUDA too (run by benchmarks/gpu_check.py): the row pool's cache surgery on the device."""
    import copy

    gpu = copy.deepcopy(model).cuda()
    kw = dict(scorer="ib", b0=2, rounds=5)
    assert_same_trees(grow(sample_trees, gpu, **kw)[0], grow(grow_trees_continuously, gpu, **kw)[0])
