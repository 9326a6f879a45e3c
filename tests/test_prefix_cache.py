"""Tests for ibtpo.rollout.prefix_cache and its use by the row pool (`rollout.prefix_cache_mb`):
a branch that starts from its prefix's cached keys and values computes what a prefilled branch
computes, so the continuous scheduler still grows the synchronous scheduler's trees.

Floats are compared within test_scheduler's TOL (1e-5; see its docstring): a cached position was
computed by a decode step, a prefilled one by a prefill, so the sums run in another order.
"""

import pytest
import torch

from ibtpo.config import ConfigError, load_config
from ibtpo.rollout.engines.contract import SamplingParams
from ibtpo.rollout.engines.torch import TorchEngine as Engine
from ibtpo.rollout.pool import Row, RowPool
from ibtpo.rollout.prefix_cache import PrefixCache
from ibtpo.rollout.sampler import RolloutParams, sample_trees
from ibtpo.rollout.scheduler import grow_trees_continuously
from test_scheduler import (  # noqa: F401  (model: a fixture)
    BOS,
    EOS,
    METAS,
    PAD,
    PROMPTS,
    SAME_KEYS,
    TEXTS,
    TOL,
    VOCAB,
    assert_same_trees,
    decode,
    grow,
    model,
    reward_fn,
    tree_keys,
)


def kv(n: int, layers: int = 2, fill: float = 0.0):
    """(H = 2, n, D = 4) float32 keys and values per layer: 2 * layers * 32 n bytes."""
    return ([torch.full((2, n, 4), fill) for _ in range(layers)],
            [torch.full((2, n, 4), fill) for _ in range(layers)])


def test_lookup_finds_an_entry_that_starts_with_the_prefix():
    cache = PrefixCache(10_000)
    cache.put([1, 2, 3, 4], *kv(4, fill=1.0))
    cache.put([1, 2, 5], *kv(3, fill=2.0))
    assert cache.lookup([1, 2, 3]).keys[0][0, 0, 0] == 1.0  # a strict prefix of the first
    assert cache.lookup([1, 2, 5]).keys[0][0, 0, 0] == 2.0  # all of the second
    assert cache.lookup([1, 2]).keys[0][0, 0, 0] == 2.0  # both: the most recently used
    assert cache.lookup([1, 2, 3, 4, 6]) is None  # longer than every entry
    assert cache.lookup([2]) is None and cache.lookup([]) is None
    assert cache.stats == {"hits": 3, "misses": 3, "reused_tokens": 8, "evicted": 0}


def test_the_byte_cap_evicts_the_least_recently_used():
    size = 2 * 2 * 2 * 3 * 4 * 4  # keys and values, 2 layers, 2 heads, 3 positions, 4 dims, fp32
    cache = PrefixCache(2 * size)
    cache.put([1, 1, 1], *kv(3))
    cache.put([2, 2, 2], *kv(3))
    assert cache.nbytes == 2 * size and len(cache) == 2
    assert cache.lookup([1]) is not None  # [1, 1, 1] is now the most recently used
    cache.put([3, 3, 3], *kv(3))
    assert cache.lookup([2]) is None and cache.lookup([1]) is not None
    assert len(cache) == 2 and cache.nbytes == 2 * size and cache.stats["evicted"] == 1
    cache.put(list(range(9)), *kv(9))  # larger than the cap: not kept, nothing evicted
    assert len(cache) == 2 and cache.lookup([0]) is None
    cache.put([3, 3, 3], *kv(3))  # the same tokens again replace the entry
    assert len(cache) == 2 and cache.nbytes == 2 * size


def test_put_checks_shapes_and_the_cap():
    with pytest.raises(ValueError, match=r"\(H, 3, D\)"):
        PrefixCache(1000).put([1, 2, 3], *kv(2))
    with pytest.raises(ValueError, match="max_bytes"):
        PrefixCache(-1)


def test_a_row_from_the_cache_computes_what_a_prefilled_row_computes(model):  # noqa: F811
    """A (9-token prefix, 12 tokens) runs; when it stops, B continues A's prefix and first 5
    tokens and C only A's prefix: both join from A's cache (no prefill) while D decodes. Each
    row's sample equals the engine's for it alone."""
    a = Row([BOS] + list(range(3, 11)), 12, 11, "A")
    d = Row([BOS, 20, 21], 30, 14, "D")
    got, joined = {}, {}

    def on_finish(finished):
        got.update(finished)
        if any(tag == "A" for tag, _ in finished):
            tokens = got["A"].token_ids
            joined["B"] = Row(a.prefix + tokens[:5], 8, 12, "B")
            joined["C"] = Row(list(a.prefix), 6, 13, "C")
            return [joined["B"], joined["C"]]
        return []

    stop = [VOCAB + 7]  # never sampled: every row runs to its limit
    pool = RowPool(Engine(model, stop, PAD), prefix_cache_bytes=1 << 20)
    stats = pool.run([a, d], SamplingParams(), on_finish)
    assert sorted(got) == list("ABCD")
    assert stats["prefix_hits"] == 2 and stats["prefills"] == 1  # B and C: no prefill
    assert stats["prefix_tokens"] == (len(a.prefix) + 5 - 1) + (len(a.prefix) - 1)
    assert stats["joins"] == 2 and pool.prefix_cache is None  # the cache lives for one run
    for r in (a, d, joined["B"], joined["C"]):
        alone = Engine(model, stop, PAD).generate([r.prefix], r.limit, SamplingParams(),
                                                  [r.key])[0]
        assert got[r.tag].token_ids == alone.token_ids and len(alone.token_ids) == r.limit
        torch.testing.assert_close(torch.tensor(got[r.tag].logprobs),
                                   torch.tensor(alone.logprobs), atol=TOL, rtol=0)


@pytest.mark.parametrize("kw", [
    dict(scorer="ib", b0=2, rounds=5),
    dict(scorer="ib", b0=2, rounds=9, token_budget=80),
    dict(scorer="random", b0=2, rounds=4, k=2, bn=2, branch_from_root=True),
])
def test_the_continuous_scheduler_with_a_prefix_cache_grows_the_same_trees(model, kw):  # noqa: F811
    sync, ms = grow(sample_trees, model, **kw)
    cont, mc = grow(grow_trees_continuously, model, prefix_cache_mb=1, **kw)
    assert_same_trees(sync, cont)
    assert {k: ms[k] for k in SAME_KEYS} == {k: mc[k] for k in SAME_KEYS}
    # every branch reuses a prefix: its node ends a step of a finished continuation (the root:
    # the prompt, cached by the round-0 rows)
    assert mc["rollout/prefix_hits"] == mc["rollout/branches"] > 0
    assert mc["rollout/prefix_tokens"] > mc["rollout/prefix_hits"]


def test_queueing_and_greedy_with_a_prefix_cache(model):  # noqa: F811
    """batch_size 3 (branches wait in the queue, some join a running batch from the cache) and
    greedy decoding, with drops at every stop."""
    params = RolloutParams(max_new_tokens=12, scorer="ib", b0=2, rounds=4, prefix_cache_mb=1)
    sync, _ = sample_trees(Engine(model, EOS, PAD), PROMPTS, TEXTS, METAS, reward_fn, decode,
                           params, SamplingParams(temperature=0), tree_keys(1))
    cont, m = grow_trees_continuously(Engine(model, EOS, PAD, batch_size=3, drop_fraction=0.0),
                                      PROMPTS, TEXTS, METAS, reward_fn, decode, params,
                                      SamplingParams(temperature=0), tree_keys(1))
    assert_same_trees(sync, cont)
    # every branch hits, and so do round-0 chains that waited while a chain of their prompt ran
    assert m["rollout/prefix_hits"] > m["rollout/branches"] > 0
    assert m["rollout/prefix_evicted"] == 0


def test_a_tiny_cap_falls_back_to_prefills(model):  # noqa: F811
    """Entries larger than the cap are never kept: no hits, a prefill per start."""
    pool = RowPool(Engine(model, [VOCAB + 7], PAD), prefix_cache_bytes=64)  # < any entry
    stats = pool.run([Row([BOS, 5, 6], 4, 1, "A")], SamplingParams(),
                     lambda f: [Row([BOS, 5, 6] + f[0][1].token_ids[:2], 3, 2, "B")]
                     if f[0][0] == "A" else [])
    assert stats["prefix_hits"] == 0 and stats["prefills"] == 2 and stats["prefix_evicted"] == 0


def test_an_evicted_prefix_is_prefilled(model):  # noqa: F811
    """A cap that holds A's entry or D's, not both: D (limit 5) stops first, A's entry evicts
    it; then B continues A (a hit) and E continues D (evicted: a prefill). Both sample what they
    sample alone."""
    # 256 bytes a position (tests/toy.py): D's entry 3 + 5 - 1 = 7 positions (1,792 bytes), A's
    # 9 + 12 - 1 = 20 (5,120 bytes)
    a, d = Row([BOS] + list(range(3, 11)), 12, 11, "A"), Row([BOS, 20, 21], 5, 14, "D")
    got, joined = {}, {}

    def on_finish(finished):
        got.update(finished)
        if any(tag == "A" for tag, _ in finished):
            joined["B"] = Row(a.prefix + got["A"].token_ids[:4], 6, 12, "B")
            joined["E"] = Row(d.prefix + got["D"].token_ids[:2], 6, 13, "E")
            return [joined["B"], joined["E"]]
        return []

    stop = [VOCAB + 7]
    pool = RowPool(Engine(model, stop, PAD), prefix_cache_bytes=6000)
    stats = pool.run([a, d], SamplingParams(), on_finish)
    assert (stats["prefix_hits"], stats["prefills"]) == (1, 2)  # B a hit, E a prefill
    assert stats["prefix_evicted"] >= 1  # D's entry (and later ones as B and E stop)
    for r in joined.values():
        alone = Engine(model, stop, PAD).generate([r.prefix], r.limit, SamplingParams(),
                                                  [r.key])[0]
        assert got[r.tag].token_ids == alone.token_ids
        torch.testing.assert_close(torch.tensor(got[r.tag].logprobs),
                                   torch.tensor(alone.logprobs), atol=TOL, rtol=0)


def test_the_config_field_needs_the_continuous_scheduler():
    assert load_config().rollout.prefix_cache_mb == 0
    cfg = load_config(overrides=["rollout.scheduler=continuous", "rollout.prefix_cache_mb=512"])
    assert cfg.rollout.prefix_cache_mb == 512
    with pytest.raises(ConfigError, match="rollout.prefix_cache_mb.*continuous"):
        load_config(overrides=["rollout.prefix_cache_mb=512"])
    with pytest.raises(ConfigError, match="rollout.prefix_cache_mb"):
        load_config(overrides=["rollout.scheduler=continuous", "rollout.prefix_cache_mb=-1"])
