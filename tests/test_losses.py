"""Tests for ibtpo.core.losses (ALGORITHM.md §5): hand values, reference loop, bad input."""

import math

import pytest
import torch

from ibtpo.core.losses import AGG_MODES, k3_kl, policy_loss

LN = math.log


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_clipped_surrogate_hand():
    # ratios [1.5, 0.5, 1.0], A [1, -1, 2], eps 0.2:
    # tok0: min(1.5*1, 1.2*1) = 1.2 -> L = -1.2 (clipped high)
    # tok1: min(0.5*-1, 0.8*-1) = -0.8 -> L = 0.8 (clipped low)
    # tok2: min(2, 2) -> L = -2 ; mean = (-1.2 + 0.8 - 2)/3 = -0.8
    old = t([[0.0, 0.0, 0.0]])
    logp = t([[LN(1.5), LN(0.5), 0.0]])
    adv, mask = t([[1.0, -1.0, 2.0]]), t([[1, 1, 1]])
    loss, m = policy_loss(logp, old, adv, mask)
    assert loss.item() == pytest.approx(-0.8, abs=1e-6)
    assert m["loss/clipfrac_low"].item() == pytest.approx(1 / 3)
    assert m["loss/clipfrac_high"].item() == pytest.approx(1 / 3)
    assert m["loss/clipfrac"].item() == pytest.approx(2 / 3)
    assert m["loss/ratio_mean"].item() == pytest.approx(1.0, abs=1e-6)   # (1.5 + .5 + 1)/3
    # spread: sqrt((0.5^2 + 0.5^2 + 0^2) / 3) = sqrt(1/6)
    assert m["loss/ratio_std"].item() == pytest.approx((1 / 6) ** 0.5, abs=1e-6)
    # eps_high = 0.28: tok0 -> -1.28 ; mean = (-1.28 + 0.8 - 2)/3 = -0.8267
    loss2, _ = policy_loss(logp, old, adv, mask, eps_high=0.28)
    assert loss2.item() == pytest.approx((-1.28 + 0.8 - 2) / 3, abs=1e-6)
    # unclipped side: ratio 1.5 with A = -1 -> min(-1.5, -1.2) = -1.5 -> L = 1.5, no clip counted
    loss3, m3 = policy_loss(t([[LN(1.5)]]), t([[0.0]]), t([[-1.0]]), t([[1]]))
    assert loss3.item() == pytest.approx(1.5, abs=1e-6) and m3["loss/clipfrac"].item() == 0.0


def test_aggregation_modes_hand():
    # ratio 1 -> L_t = -A_t. row0 A [1, 3, 100] mask [1,1,0]; row1 A [6, 50, 50] mask [1,0,0]
    logp = torch.zeros(2, 3)
    adv, mask = t([[1, 3, 100], [6, 50, 50]]), t([[1, 1, 0], [1, 0, 0]])
    f = lambda mode, **kw: policy_loss(logp, logp, adv, mask, agg_mode=mode, **kw)[0].item()  # noqa
    assert f("seq-mean-token-mean") == pytest.approx(-4.0)      # mean(-(1+3)/2, -6) = -4
    assert f("token-mean") == pytest.approx(-10 / 3)            # -(1+3+6)/3
    # Dr. GRPO: row sums -4, -6; / 4 -> -1, -1.5; mean -1.25.  With None: / T=3 -> mean -5/3
    assert f("seq-mean-token-sum-norm", max_response_len=4) == pytest.approx(-1.25)
    assert f("seq-mean-token-sum-norm") == pytest.approx(-5 / 3)


def test_empty_row_is_skipped_in_seq_mean():
    logp = torch.zeros(2, 2)
    # row1 has no trained tokens: seq-mean over row0 only = -(2+4)/2 = -3
    loss, _ = policy_loss(logp, logp, t([[2, 4], [9, 9]]), t([[1, 1], [0, 0]]))
    assert loss.item() == pytest.approx(-3.0)


def test_kl_and_entropy_terms_hand():
    # logp = 0, ref = ln 2: k3 = 2 - ln 2 - 1 = 1 - ln 2; A = 0 -> pg = 0
    logp, ref = torch.zeros(1, 2), torch.full((1, 2), LN(2.0))
    ent, mask = t([[1.0, 3.0]]), t([[1, 1]])
    loss, m = policy_loss(logp, logp, torch.zeros(1, 2), mask, ref_logprobs=ref, beta_kl=0.5,
                          entropy=ent, entropy_coef=0.1)
    # loss = 0.5 * (1 - ln 2) - 0.1 * mean(1, 3) = 0.5 * 0.30685 - 0.2
    assert loss.item() == pytest.approx(0.5 * (1 - LN(2)) - 0.2, abs=1e-6)
    assert m["loss/kl"].item() == pytest.approx(1 - LN(2), abs=1e-6)
    assert m["loss/entropy"].item() == pytest.approx(2.0)
    assert k3_kl(torch.zeros(3), torch.zeros(3)).tolist() == [0.0, 0.0, 0.0]


def reference_loss(logp, old, adv, mask, ref, ent, eps_low, eps_high, beta_kl, coef, mode, max_len):
    """Python loops over rows and tokens."""
    n, tt = len(logp), len(logp[0])
    per_row, all_tok = [], []
    for i in range(n):
        vals = []
        for j in range(tt):
            if mask[i][j] == 0:
                continue
            rho = math.exp(logp[i][j] - old[i][j])
            a = adv[i][j]
            pg = -min(rho * a, min(max(rho, 1 - eps_low), 1 + eps_high) * a)
            d = ref[i][j] - logp[i][j]
            kl = math.exp(d) - d - 1
            vals.append(pg + beta_kl * kl - coef * ent[i][j])
        per_row.append(vals)
        all_tok.extend(vals)
    if mode == "token-mean":
        return sum(all_tok) / max(len(all_tok), 1)
    if mode == "seq-mean-token-mean":
        rows = [sum(v) / len(v) for v in per_row if v]
        return sum(rows) / max(len(rows), 1)
    norm = max_len if max_len is not None else tt
    return sum(sum(v) / norm for v in per_row) / n


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("max_len", [None, 16])
def test_matches_reference_loop(mode, max_len):
    g = torch.Generator().manual_seed(0)
    n, tt = 5, 7
    logp = -torch.rand(n, tt, generator=g) * 2
    old = logp + (torch.rand(n, tt, generator=g) - 0.5)        # ratios around [0.6, 1.65]
    ref = logp + (torch.rand(n, tt, generator=g) - 0.5)
    adv = torch.randn(n, tt, generator=g)
    ent = torch.rand(n, tt, generator=g)
    mask = (torch.rand(n, tt, generator=g) > 0.3).float()
    mask[2] = 0.0                                                # one empty row
    kw = dict(eps_low=0.15, eps_high=0.3, beta_kl=0.05, entropy_coef=0.02)
    loss, m = policy_loss(logp, old, adv, mask, ref_logprobs=ref, entropy=ent, agg_mode=mode,
                          max_response_len=max_len, **kw)
    L = lambda x: x.double().tolist()  # noqa: E731
    exp = reference_loss(L(logp), L(old), L(adv), L(mask), L(ref), L(ent), 0.15, 0.3, 0.05, 0.02,
                         mode, max_len)
    assert loss.item() == pytest.approx(exp, abs=1e-5)
    total = m["loss/pg"] + 0.05 * m["loss/kl"] - 0.02 * m["loss/entropy"]
    assert total.item() == pytest.approx(loss.item(), abs=1e-6)


def test_grad_flows_and_metrics_detached():
    logp = torch.zeros(2, 3, requires_grad=True)
    adv = t([[1, -1, 0.5], [2, 0, -3]])
    loss, m = policy_loss(logp, torch.zeros(2, 3), adv, torch.ones(2, 3))
    loss.backward()
    # d/dlogp of -rho*A at rho = 1 is -A; seq-mean-token-mean divides by 3 * 2
    assert torch.allclose(logp.grad, -adv / 6)
    assert all(not v.requires_grad and v.dim() == 0 for v in m.values())
    assert set(m) == {"loss/pg", "loss/kl", "loss/entropy", "loss/clipfrac", "loss/clipfrac_low",
                      "loss/clipfrac_high", "loss/ratio_mean", "loss/ratio_std", "loss/total"}


def test_bad_inputs():
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="agg_mode"):
        policy_loss(z, z, z, z, agg_mode="sum")
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(z, z, torch.zeros(2, 4), z)
    with pytest.raises(ValueError, match="logprobs"):
        policy_loss(torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(z, z, z, z, beta_kl=0.1)
    with pytest.raises(ValueError, match="entropy"):
        policy_loss(z, z, z, z, entropy_coef=0.1)
    with pytest.raises(ValueError, match="eps_low"):
        policy_loss(z, z, z, z, eps_low=-0.1)
    with pytest.raises(ValueError, match="beta_kl"):
        policy_loss(z, z, z, z, ref_logprobs=z, beta_kl=-1.0)
    with pytest.raises(ValueError, match="max_response_len"):
        policy_loss(z, z, z, z, agg_mode="seq-mean-token-sum-norm", max_response_len=0)
