"""Tests for ibtpo.training.logprobs: chunked fp32 log-probs and entropies equal the plain ones."""

import pytest
import torch

from ibtpo.training.logprobs import sequence_logprobs, token_entropy, token_logprobs


def plain(logits, targets, temperature):
    logp = torch.log_softmax(logits.float() / temperature, -1)
    return logp.gather(-1, targets[..., None])[..., 0], -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("chunk", [1, 3, 7, 4096])
def test_chunked_values_and_gradients_equal_plain(chunk):
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11, requires_grad=True)  # (N, T, V)
    targets = torch.randint(0, 11, (2, 5))
    want_lp, want_ent = plain(logits, targets, 0.7)
    (g_want,) = torch.autograd.grad((want_lp.sum() + 0.3 * want_ent.sum()), logits)
    lp = token_logprobs(logits, targets, 0.7, chunk_tokens=chunk)
    ent = token_entropy(logits, 0.7, grad=True, chunk_tokens=chunk)
    (g,) = torch.autograd.grad(lp.sum() + 0.3 * ent.sum(), logits)
    torch.testing.assert_close(lp, want_lp)
    torch.testing.assert_close(ent, want_ent)
    torch.testing.assert_close(g, g_want)


def test_logprob_by_hand():
    # logits [0, ln 3] -> probs [1/4, 3/4]; entropy = -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.5623
    logits = torch.tensor([[[0.0, float(torch.log(torch.tensor(3.0)))]]])
    lp = token_logprobs(logits, torch.tensor([[1]]))
    assert lp.item() == pytest.approx(torch.log(torch.tensor(0.75)).item(), abs=1e-6)
    assert token_entropy(logits).item() == pytest.approx(0.5623351, abs=1e-6)


def test_bf16_logits_give_fp32_and_metric_entropy_has_no_graph():
    logits = torch.randn(1, 4, 9).bfloat16().requires_grad_()
    lp = token_logprobs(logits, torch.zeros(1, 4, dtype=torch.long))
    ent = token_entropy(logits)
    assert lp.dtype == torch.float32 and lp.requires_grad
    assert ent.dtype == torch.float32 and not ent.requires_grad


def test_sequence_logprobs_entropy_modes(tiny_model):
    ids = torch.tensor([[1, 5, 6, 7, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    lp, ent = sequence_logprobs(tiny_model, ids, mask, entropy=None)
    assert ent is None and lp.shape == (1, 5) and lp[0, 0] == 0
    _, ent = sequence_logprobs(tiny_model, ids, mask, entropy="metric")
    assert ent.shape == (1, 5) and not ent.requires_grad
    with pytest.raises(ValueError, match="entropy"):
        sequence_logprobs(tiny_model, ids, mask, entropy="yes")
