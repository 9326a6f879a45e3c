"""Tests for the torch engine (ibtpo.rollout.engines: torch, kv_cache, sampling): cached
decoding equals full forwards, log-probs, stops, sampling."""

import math

import pytest
import torch
import torch.nn.functional as F

from ibtpo.rollout.engines.contract import SamplingParams
from ibtpo.rollout.engines.kv_cache import extend, prefill
from ibtpo.rollout.engines.sampling import draw, truncate
from ibtpo.rollout.engines.torch import TorchEngine as Engine
from ibtpo.rollout.streams import uniforms
from ibtpo.seeding import stream_key
from toy import EOS, PAD, VOCAB
from toy import random_llama as tiny_model

NO_EOS = VOCAB + 7  # an id outside the vocabulary: never sampled, so rows stop by length only


@pytest.fixture(scope="module")
def model():
    return tiny_model()


PREFIXES = [[1, 5, 6, 7, 8, 9, 10], [1, 3], [1, 4, 4, 4, 11], [1]]


def keys(n: int, seed: int = 0) -> list[int]:
    """Stream keys of `n` requests."""
    return [stream_key(seed, "engine-test", i) for i in range(n)]


def full_logits(model, ids: list[int]) -> torch.Tensor:
    """(T, V) logits of one unpadded sequence, no cache."""
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def test_extend_from_cached_prefix_equals_full_forward(model):
    """Left-padded prefixes of 7, 2, 5, 1 tokens, then 3 fed tokens (one row dropped midway).

    The cache is sized for 1 new token, so feeding 3 also exercises its growth.
    """
    fed = [[12, 13, 14], [15, 16, 17], [18, 19, 20], [21, 22, 23]]
    with torch.no_grad():
        logits, state = prefill(model, PREFIXES, PAD)
        for i, p in enumerate(PREFIXES):
            torch.testing.assert_close(logits[i], full_logits(model, p)[-1], atol=1e-5, rtol=0)
        for j in range(3):
            if j == 1:
                state.select(torch.tensor([0, 2, 3]))  # row 1 finished
            rows = state.rows.tolist()
            logits = extend(model, state, torch.tensor([fed[r][j] for r in rows]))
            for k, r in enumerate(rows):
                ref = full_logits(model, PREFIXES[r] + fed[r][: j + 1])[-1]
                torch.testing.assert_close(logits[k], ref, atol=1e-5, rtol=0)


def test_identical_prefixes_run_once_and_decode_apart(model):
    """Prefixes 0, 1, 0, 1: the prefill forward sees 2 rows; each of the 4 then decodes its own
    token and gets the logits of a full forward of its own sequence."""
    prefixes = [PREFIXES[0], PREFIXES[1], PREFIXES[0], PREFIXES[1]]
    seen = []
    hook = model.model.embed_tokens.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    try:
        with torch.no_grad():
            logits, state = prefill(model, prefixes, PAD)
            fed = torch.tensor([12, 13, 14, 15])
            after = extend(model, state, fed)
    finally:
        hook.remove()
    assert seen[0] == (2, 7) and state.next_pos.tolist() == [8, 3, 8, 3]  # after one token
    for i, p in enumerate(prefixes):
        torch.testing.assert_close(logits[i], full_logits(model, p)[-1], atol=1e-5, rtol=0)
        ref = full_logits(model, p + [int(fed[i])])[-1]
        torch.testing.assert_close(after[i], ref, atol=1e-5, rtol=0)


def test_position_ids_start_at_first_real_token(model):
    _, state = prefill(model, PREFIXES, PAD)
    assert state.next_pos.tolist() == [7, 2, 5, 1]
    assert state.attention_mask.sum(-1).tolist() == [7, 2, 5, 1]


@pytest.mark.parametrize("sampling", [SamplingParams(temperature=0.7, top_p=0.9),
                                      SamplingParams(temperature=1.3, top_k=5),
                                      SamplingParams(temperature=0.0)])
def test_sampled_logprobs_equal_training_forward(model, sampling):
    """log-probs/entropies of softmax(logits / T) (T = 1 when greedy) over prompt + response."""
    engine = Engine(model, NO_EOS, PAD)
    samples = engine.generate(PREFIXES, [6, 9, 4, 12], sampling, keys(4, 3))
    temp = sampling.temperature or 1.0
    for p, s in zip(PREFIXES, samples):
        logp = F.log_softmax(full_logits(model, p + s.token_ids)[len(p) - 1:-1] / temp, -1)
        ref = logp.gather(-1, torch.tensor(s.token_ids)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(s.logprobs), ref, atol=1e-4, rtol=0)
        ent = -(logp.exp() * logp).sum(-1)
        torch.testing.assert_close(torch.tensor(s.entropies), ent, atol=1e-4, rtol=0)


def greedy_reference(model, prefix: list[int], n: int) -> list[int]:
    """Argmax decoding with full forwards, no cache."""
    ids = list(prefix)
    for _ in range(n):
        ids.append(int(full_logits(model, ids)[-1].argmax()))
    return ids[len(prefix):]


def test_greedy_equals_argmax_of_full_forward(model):
    samples = Engine(model, NO_EOS, PAD).generate(PREFIXES, 8, SamplingParams(temperature=0))
    for p, s in zip(PREFIXES, samples):
        assert s.token_ids == greedy_reference(model, p, 8)
        assert s.stop_reason == "length"


def test_eos_stop_includes_eos_token_and_its_logprob(model):
    """EOS := the 4th greedy token of prefix 0 (absent from its first 3), so row 0 stops after 4."""
    ref = Engine(model, NO_EOS, PAD).generate([PREFIXES[0]], 8, SamplingParams(temperature=0))[0]
    eos = ref.token_ids[3]
    assert eos not in ref.token_ids[:3]
    s = Engine(model, eos, PAD).generate([PREFIXES[0]], 8, SamplingParams(temperature=0))[0]
    assert s.stop_reason == "eos"
    assert s.token_ids == ref.token_ids[:4] and s.token_ids[-1] == eos
    assert s.logprobs == pytest.approx(ref.logprobs[:4], abs=1e-6)
    assert len(s.entropies) == 4


def test_per_request_limits_including_zero(model):
    engine = Engine(model, NO_EOS, PAD)
    samples = engine.generate(PREFIXES, [0, 3, 7, 1], SamplingParams(),
                              keys(4))
    assert [len(s.token_ids) for s in samples] == [0, 3, 7, 1]
    assert [len(s.logprobs) for s in samples] == [0, 3, 7, 1]
    assert [len(s.entropies) for s in samples] == [0, 3, 7, 1]
    assert all(s.stop_reason == "length" for s in samples)
    assert engine.generate(PREFIXES, 0, SamplingParams()) == [
        type(samples[0])([], [], [], "length") for _ in PREFIXES]


def test_chunking_keeps_request_order(model):
    """batch_size 2 (chunks sorted by length) gives the same greedy samples as one chunk."""
    greedy = SamplingParams(temperature=0)
    small = Engine(model, NO_EOS, PAD, batch_size=2).generate(PREFIXES, [5, 2, 4, 3], greedy)
    big = Engine(model, NO_EOS, PAD).generate(PREFIXES, [5, 2, 4, 3], greedy)
    assert [s.token_ids for s in small] == [s.token_ids for s in big]
    for a, b in zip(small, big):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_same_seed_same_samples_other_seed_differs(model):
    engine = Engine(model, NO_EOS, PAD)

    def run(seed):
        out = engine.generate(PREFIXES * 4, 10, SamplingParams(),
                              keys(16, seed))
        return [s.token_ids for s in out]

    assert run(5) == run(5)
    assert run(5) != run(6)


@pytest.mark.parametrize("sampling", [SamplingParams(top_k=1), SamplingParams(top_p=1e-6)])
def test_top_k_one_and_tiny_top_p_equal_greedy(model, sampling):
    greedy = Engine(model, NO_EOS, PAD).generate(PREFIXES, 6, SamplingParams(temperature=0))
    out = Engine(model, NO_EOS, PAD).generate(PREFIXES, 6, sampling,
                                              keys(4, 1))
    assert [s.token_ids for s in out] == [s.token_ids for s in greedy]
    for a, b in zip(out, greedy):  # both at T = 1
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_truncate_by_hand():
    """probs (0.5, 0.3, 0.2): top_p 0.6 keeps the first two (mass before: 0, 0.5, 0.8);
    top_k 1 keeps the first; top_k 2 then top_p 0.4 keeps the first."""
    logp = torch.tensor([[0.5, 0.3, 0.2]]).log()
    kept = truncate(logp, 0, 0.6).isfinite()[0].tolist()
    assert kept == [True, True, False]
    assert truncate(logp, 1, 1.0).isfinite()[0].tolist() == [True, False, False]
    assert truncate(logp, 2, 0.4).isfinite()[0].tolist() == [True, False, False]


def test_top_p_after_top_k_uses_renormalised_survivors():
    """probs (0.5, 0.3, 0.2), top_k 2 -> survivors renormalised to (0.625, 0.375); top_p 0.6: the
    second token has 0.625 >= 0.6 of mass before it, so only the first survives (without the
    renormalisation its mass before would be 0.5 < 0.6 and it would be kept, unlike HF / vLLM)."""
    logp = torch.tensor([[0.5, 0.3, 0.2]]).log()
    assert truncate(logp, 2, 0.6).isfinite()[0].tolist() == [True, False, False]
    assert truncate(logp, 2, 0.7).isfinite()[0].tolist() == [True, True, False]


def test_draw_is_the_inverse_cdf():
    """probs (0.5, 0.3, 0.2, 0): cdf (0.5, 0.8, 1.0, 1.0); u = 0.49 -> 0, 0.51 -> 1, 0.79 -> 1,
    0.81 -> 2, 0.999 -> 2 (never the probability-0 token)."""
    logp = torch.tensor([[0.5, 0.3, 0.2, 0.0]]).log().expand(5, 4)
    u = torch.tensor([0.49, 0.51, 0.79, 0.81, 0.999], dtype=torch.float64)
    assert draw(logp, u).tolist() == [0, 1, 1, 2, 2]


def test_a_uniform_of_exactly_one_never_draws_a_truncated_token():
    """u = 1.0 (a stream's largest value rounds to it): before, searchsorted ran past the end and
    the clamp gave the last id, (0.5, 0.3, 0.2) cut to top-k 2 -> token 2 of probability 0. Now the
    last token of positive probability: 1."""
    logp = truncate(torch.tensor([[0.5, 0.3, 0.2]]).log(), 2, 1.0)
    assert draw(logp, torch.tensor([1.0], dtype=torch.float64)).tolist() == [1]
    full = torch.tensor([[0.5, 0.3, 0.2]]).log()  # nothing truncated: the last id, as before
    assert draw(full, torch.tensor([1.0], dtype=torch.float64)).tolist() == [2]


def test_top_p_keeps_the_exact_nucleus_on_a_large_vocabulary():
    """150,000 tokens: two of mass ~0.9 and ~0.1, then a tail of 1e-9 each; top_p half a tail
    token past 52 of them. The mass before tail token j is p0 + p1 + j * 1e-9, so the nucleus is
    exactly tokens 0..52 with a margin of 5e-10 on either side: float64 resolves it on any
    machine, while a float32 cumsum (spacing 6e-8 near 1) cannot tell 60 tail tokens apart."""
    n, tail = 150_000, 1e-9
    logp = torch.full((1, n), math.log(tail))
    logp[0, 0], logp[0, 1] = math.log(0.9), math.log(0.1 - (n - 2) * tail)
    p0, p1, pt = (math.exp(v) for v in logp[0, :3].tolist())  # of the fp32 log-probs
    top_p = p0 + p1 + 51.5 * pt  # between the mass before tail token 51 and 52
    kept = truncate(logp, 0, top_p).isfinite()[0]
    assert int(kept.sum()) == 2 + 52 and kept[0] and kept[1]  # which tail tokens: a tie


def test_draw_matches_probabilities():
    """20k draws from (0.5, 0.3, 0.2) at the uniforms of 20k stream keys: frequencies within
    0.015 (≈ 4 std)."""
    logp = torch.tensor([[0.5, 0.3, 0.2]]).log().expand(20000, 3)
    tok = draw(logp, uniforms(torch.tensor(keys(20000)), 0))
    freq = torch.bincount(tok, minlength=3).float() / 20000
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.3, 0.2]), atol=0.015, rtol=0)


def test_bf16_model_gives_fp32_logprobs():
    model = tiny_model().to(torch.bfloat16)
    samples = Engine(model, NO_EOS, PAD).generate(PREFIXES, 5, SamplingParams(),
                                                  keys(4))
    for s in samples:
        assert len(s.token_ids) == 5
        assert all(math.isfinite(x) and x <= 0 for x in s.logprobs)
        assert all(0 <= x <= math.log(VOCAB) + 1e-4 for x in s.entropies)


def test_training_mode_is_restored(model):
    model.train()
    Engine(model, NO_EOS, PAD).generate(PREFIXES, 2, SamplingParams(temperature=0))
    assert model.training
    model.eval()


@pytest.mark.parametrize("kwargs, name", [
    (dict(prefixes=[[1], []], max_new_tokens=3), "prefixes"),
    (dict(prefixes=[[1]], max_new_tokens=-1), "max_new_tokens"),
    (dict(prefixes=[[1], [1]], max_new_tokens=[1]), "max_new_tokens"),
])
def test_bad_requests_raise(model, kwargs, name):
    with pytest.raises(ValueError, match=name):
        Engine(model, EOS, PAD).generate(sampling=SamplingParams(), **kwargs)


@pytest.mark.parametrize("kwargs, name", [
    (dict(temperature=-0.1), "temperature"), (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"), (dict(top_k=-1), "top_k"),
])
def test_bad_sampling_params_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SamplingParams(**kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_greedy_matches_cpu():
    cpu = tiny_model()
    gpu = tiny_model().cuda()
    a = Engine(cpu, NO_EOS, PAD).generate(PREFIXES, 6, SamplingParams(temperature=0))
    b = Engine(gpu, NO_EOS, PAD).generate(PREFIXES, 6, SamplingParams(temperature=0),
                                          keys(4))
    assert [s.token_ids for s in a] == [s.token_ids for s in b]


def test_rows_stopping_at_eos_midway_keep_exact_logprobs(model):
    """EOS := token 7 at T = 2 over 16 prompts: some rows stop early (dropped from the cache)."""
    prefixes = [[1, 3 + i % 30, 4 + i % 7] for i in range(16)]
    samples = Engine(model, 7, PAD).generate(prefixes, 12, SamplingParams(temperature=2.0),
                                             keys(16))
    reasons = {s.stop_reason for s in samples}
    assert reasons == {"eos", "length"}
    for p, s in zip(prefixes, samples):
        assert (s.stop_reason == "eos") == (s.token_ids[-1] == 7) and 7 not in s.token_ids[:-1]
        assert s.stop_reason == "eos" or len(s.token_ids) == 12
        logp = F.log_softmax(full_logits(model, p + s.token_ids)[len(p) - 1:-1] / 2.0, -1)
        ref = logp.gather(-1, torch.tensor(s.token_ids)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(s.logprobs), ref, atol=1e-4, rtol=0)


def test_dropping_stopped_rows_does_not_change_samples(model):
    """Greedy: dropping stopped rows at once (0), at 25 % or never (1) gives the same samples."""
    prefixes = [[1, 3 + i % 30, 4 + i % 7, 5 + i % 11] for i in range(12)]
    free = Engine(model, NO_EOS, PAD).generate(prefixes, 10, SamplingParams(temperature=0))
    counts = torch.bincount(torch.tensor([t for s in free for t in s.token_ids[1:]]))
    eos = int(counts.argmax())  # a token that ends several rows early
    outs = [Engine(model, eos, PAD, drop_fraction=f).generate(prefixes, [10, 7] * 6,
                                                              SamplingParams(temperature=0))
            for f in (0.0, 0.25, 1.0)]
    assert {s.stop_reason for s in outs[0]} == {"eos", "length"}
    for other in outs[1:]:
        assert [s.token_ids for s in other] == [s.token_ids for s in outs[0]]
        assert [s.stop_reason for s in other] == [s.stop_reason for s in outs[0]]
        for a, b in zip(other, outs[0]):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_any_of_several_stop_ids_ends_a_row(model):
    """Chat models end a turn with one of several ids (<|im_end|>, <|endoftext|>): each counts."""
    greedy = SamplingParams(temperature=0)
    free = Engine(model, NO_EOS, PAD).generate(PREFIXES, 8, greedy)  # no stop: 8 tokens each
    stops = {free[0].token_ids[2], free[2].token_ids[4]}
    assert len(stops) == 2  # two distinct ids, each the first stop of its row (checked below)
    out = Engine(model, sorted(stops), PAD).generate(PREFIXES, 8, greedy)
    ends = []
    for f, o in zip(free, out):
        first = next((i for i, t in enumerate(f.token_ids) if t in stops), None)
        cut = f.token_ids if first is None else f.token_ids[:first + 1]
        assert o.token_ids == cut and o.stop_reason == ("length" if first is None else "eos")
        assert o.logprobs == pytest.approx(f.logprobs[:len(cut)], abs=1e-5)
        ends.append(o.token_ids[-1] if first is not None else None)
    assert stops <= set(ends)  # both ids ended some row
    with pytest.raises(ValueError, match="stop_ids"):
        Engine(model, [], PAD)


def test_a_request_samples_the_same_alone_in_any_batch_or_order(model):
    """Per-row streams: a keyed request draws the same tokens alone, in a batch of 12, in reverse
    order, and in chunks of 5 (the batch a request runs in only changes last bits of its logits,
    which move an inverse-CDF draw only when u falls within them of a boundary)."""
    prefixes = [[1, 3 + i % 30, 4 + i % 7] for i in range(12)]
    k, sampling = keys(12, 9), SamplingParams(temperature=1.0)
    together = Engine(model, NO_EOS, PAD).generate(prefixes, 10, sampling, k)
    alone = [Engine(model, NO_EOS, PAD).generate([p], 10, sampling, [kk])[0]
             for p, kk in zip(prefixes, k)]
    backwards = Engine(model, NO_EOS, PAD).generate(prefixes[::-1], 10, sampling, k[::-1])[::-1]
    chunked = Engine(model, NO_EOS, PAD, batch_size=5).generate(prefixes, 10, sampling, k)
    for other in (alone, backwards, chunked):
        assert [s.token_ids for s in other] == [s.token_ids for s in together]
    assert len({tuple(s.token_ids) for s in together}) > 6  # the rows really sample apart


def test_sampling_without_keys_is_a_clear_error(model):
    with pytest.raises(ValueError, match="keys: sampling at temperature > 0 needs one stream"):
        Engine(model, NO_EOS, PAD).generate(PREFIXES, 3, SamplingParams())
    with pytest.raises(ValueError, match="keys"):
        Engine(model, NO_EOS, PAD).generate(PREFIXES, 3, SamplingParams(), keys(3))
