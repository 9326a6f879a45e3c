"""Tests for ibtpo.core.ib_score (ALGORITHM.md §2): hand-derived values and reference vs
vectorised."""

import math
import random

import pytest

from ibtpo.core.ib_score import (
    batch_ib_scores,
    ib_diagnostics,
    ib_score,
    node_ib_scores,
    ratio,
)
from ibtpo.core.tree import add_step, new_tree, p_hat, pi_bar

L = math.log


def test_ib_score_two_children_hand():
    # r = [1/0.5, 0/0.5] = [2, 0]; eta1 = r - 1.2 = [0.8, -1.2]
    # IB = (0.5*0.8 + 0.25*(-1.2)) / 2 = 0.05; tsallis = 1 - 0.375 = 0.625
    # cov = ((0.125)(1) + (-0.125)(-1)) / 2 = 0.125
    d = ib_diagnostics([0.5, 0.25], [1.0, 0.0], 0.5, beta=5.0)
    assert d["ib"] == pytest.approx(0.05)
    assert d["tsallis"] == pytest.approx(0.625) and d["cov"] == pytest.approx(0.125)
    # mean r = 1 -> IB = (1 - mean pi)/beta + cov - 1/beta = 0.125 + 0.125 - 0.2 = 0.05
    assert d["ib"] == pytest.approx(d["tsallis"] / 5 + d["cov"] - 1 / 5)
    assert ib_score([0.5, 0.25], [1.0, 0.0], 0.5, 5.0) == pytest.approx(0.05)


def test_ib_score_parent_value_zero():
    # p_hat(u) = 0 -> r := 1 for every child; eta1 = -0.2; IB = (0.5+0.3)*(-0.2)/2 = -0.08
    d = ib_diagnostics([0.5, 0.3], [0.0, 0.0], 0.0, beta=5.0)
    assert d["ib"] == pytest.approx(-0.08) and d["cov"] == pytest.approx(0.0)
    assert ratio(0.0, 0.0) == 1.0


def test_ib_score_one_child():
    # one child: r = 1, IB = -pi/beta = -0.4/5 = -0.08 ; with beta = 2: -0.2
    assert ib_score([0.4], [1.0], 1.0, 5.0) == pytest.approx(-0.08)
    assert ib_score([0.4], [0.5], 0.5, 2.0) == pytest.approx(-0.2)


def test_ib_score_counts_weight_merged_child():
    # counts [2, 1]: r = [2, 0]; IB = (2*0.5*0.8 + 0.25*(-1.2)) / 3 = (0.8 - 0.3)/3 = 1/6
    # mean pi = (1 + 0.25)/3 = 5/12 -> tsallis 7/12
    d = ib_diagnostics([0.5, 0.25], [1.0, 0.0], 0.5, 5.0, counts=[2, 1])
    assert d["ib"] == pytest.approx(1 / 6) and d["tsallis"] == pytest.approx(7 / 12)


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_beta(beta):
    with pytest.raises(ValueError, match="beta"):
        ib_score([0.5], [1.0], 1.0, beta)


def test_bad_children():
    with pytest.raises(ValueError, match="child_values"):
        ib_score([0.5, 0.2], [1.0], 1.0, 5.0)
    with pytest.raises(ValueError, match="child_probs"):
        ib_score([], [], 1.0, 5.0)
    with pytest.raises(ValueError, match="counts"):
        ib_score([0.5], [1.0], 1.0, 5.0, counts=[0])


def hand_tree():
    """root -> A (pi 0.5) -> {L1 pi .25 r=1, L2 pi .5 r=0};  root -> L3 (pi 0.8, r=1).
    p_hat: A = 0.5, root = 2/3."""
    t = new_tree([0])
    a = add_step(t, t.root, [1, 2], [L(0.5)] * 2, [0, 0])
    l1 = add_step(t, a, [3], [L(0.25)], [0], terminal=True, reward=1.0)
    l2 = add_step(t, a, [4], [L(0.5)], [0], terminal=True, reward=0.0)
    l3 = add_step(t, t.root, [5], [L(0.8)], [0], terminal=True, reward=1.0)
    return t, a, l1, l2, l3


def test_node_ib_scores_hand_tree():
    t, a, *_ = hand_tree()
    s = node_ib_scores(t, beta=5.0)
    assert set(s) == {t.root, a}                       # leaves are never scored
    # A: r = [2, 0]; IB = (0.25*0.8 + 0.5*(-1.2))/2 = -0.2; tsallis = 1 - 0.375;
    # cov = ((-0.125)(1) + (0.125)(-1))/2 = -0.125
    assert s[a]["ib"] == pytest.approx(-0.2)
    assert s[a]["tsallis"] == pytest.approx(0.625) and s[a]["cov"] == pytest.approx(-0.125)
    # root: r = [0.5/(2/3), 1/(2/3)] = [0.75, 1.5]; eta1 = [-0.45, 0.3]
    # IB = (0.5*(-0.45) + 0.8*0.3)/2 = 0.0075; tsallis = 1 - 0.65 = 0.35
    # cov = ((-0.15)(-0.375) + (0.15)(0.375))/2 = 0.05625
    assert s[t.root]["ib"] == pytest.approx(0.0075)
    assert (s[t.root]["tsallis"] == pytest.approx(0.35)
            and s[t.root]["cov"] == pytest.approx(0.05625))


def random_tree(rng, n_leaves=12, merge_prob=0.2):
    t = new_tree([0])
    for _ in range(n_leaves):
        internal = [n for n in t.nodes() if not n.terminal]
        node = rng.choice(internal)
        for _ in range(rng.randint(0, 3)):
            k = rng.randint(1, 4)
            node = add_step(t, node, [1] * k, [rng.uniform(-3, 0) for _ in range(k)], [0.0] * k)
            if rng.random() < merge_prob:
                node.count += 1
        k = rng.randint(0, 3)
        add_step(t, node, [2] * k, [rng.uniform(-3, 0) for _ in range(k)], [0.0] * k,
                 terminal=True, reward=rng.choice([0.0, 0.0, 1.0, 0.5, None]))
    return t


@pytest.mark.parametrize("prob_norm", ["mean", "sum", "sibling"])
def test_vectorised_matches_reference_loop(prob_norm):
    rng = random.Random(0)
    trees = [random_tree(rng) for _ in range(20)]
    batched = batch_ib_scores(trees, beta=3.0, prob_norm=prob_norm)
    for t in trees:
        ph, pb = p_hat(t), pi_bar(t, prob_norm)
        single = node_ib_scores(t, beta=3.0, prob_norm=prob_norm)
        for u in t.nodes():
            if not u.children:
                assert u not in single
                continue
            ref = ib_diagnostics([pb[c] for c in u.children], [ph[c] for c in u.children], ph[u],
                                 3.0, counts=[c.count for c in u.children])
            for k in ("ib", "tsallis", "cov"):
                assert single[u][k] == pytest.approx(ref[k], abs=1e-12)
                assert batched[u][k] == pytest.approx(ref[k], abs=1e-12)
