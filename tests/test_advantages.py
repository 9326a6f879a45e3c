"""Tests for ibtpo.core.advantages (ALGORITHM.md §4): hand values, GRPO invariant, reference
loop."""

import math
import random
import statistics

import pytest

from ibtpo.core.advantages import ESTIMATORS, AdvParams, get_estimator
from ibtpo.core.tree import add_step, new_tree, p_hat, pi_bar

L = math.log
D = math.sqrt(1 / 3) + 1e-4   # sample std of [1, 0, 1] (= sqrt((1/9 + 4/9 + 1/9)/2)) + eps


def hand_tree():
    """root -> A (pi .5) -> {L1 pi .25 R=1, L2 pi .5 R=0};  root -> L3 (pi .8, R=1).
    p_hat: A = .5, root = 2/3; r: A .75, L1 2, L2 0, L3 1.5."""
    t = new_tree([0])
    a = add_step(t, t.root, [1, 2], [L(0.5)] * 2, [0, 0])
    add_step(t, a, [3], [L(0.25)], [0], terminal=True, reward=1.0)
    add_step(t, a, [4], [L(0.5)], [0], terminal=True, reward=0.0)
    add_step(t, t.root, [5], [L(0.8)], [0], terminal=True, reward=1.0)
    return t


def chain_forest(rewards, rng):
    """Independent chains from the root (no branching), random step counts and log-probs."""
    t = new_tree([0])
    for r in rewards:
        node, n = t.root, rng.randint(1, 4)
        for k in range(n):
            m = rng.randint(1, 3)
            node = add_step(t, node, [1] * m, [rng.uniform(-2, 0) for _ in range(m)], [0.0] * m,
                            terminal=k == n - 1, reward=r if k == n - 1 else None)
    return t


def test_registry_and_bad_names():
    assert set(ESTIMATORS) == {"grpo", "ibtpo"}
    with pytest.raises(ValueError, match="estimator.*'grpo'"):
        get_estimator("ppo")
    with pytest.raises(ValueError, match="beta"):
        AdvParams(beta=-1)
    with pytest.raises(ValueError, match="prob_norm"):
        AdvParams(prob_norm="x")
    with pytest.raises(ValueError, match="eps_std"):
        AdvParams(eps_std=-1)


def test_ibtpo_hand_tree():
    adv, m = get_estimator("ibtpo")([hand_tree()], AdvParams(beta=5.0, lam=0.1))
    # A_GL: A (0.5 - 2/3)/D = -1/(6D); L1 (1/3)/D; L2 (-2/3)/D; L3 (1/3)/D
    # A_IB: A (0.75-1.2)*0.5 = -0.225; L1 (2-1.2)*.25 = 0.2; L2 (0-1.2)*.5 = -0.6;
    #       L3 (1.5-1.2)*.8 = .24
    a_step = -1 / (6 * D) + 0.1 * -0.225
    expected = [[a_step, 1 / (3 * D) + 0.02], [a_step, -2 / (3 * D) - 0.06], [1 / (3 * D) + 0.024]]
    assert len(adv) == 1 and [len(t) for t in adv[0]] == [2, 2, 1]
    for got, exp in zip(adv[0], expected):
        assert got == pytest.approx(exp, abs=1e-12)
    assert m["adv/zero_var_frac"] == 0.0


def test_ibtpo_hand_tree_with_reference_step_probabilities():
    t = hand_tree()
    a, l1, l2 = t.root.children[0], *t.root.children[0].children
    l3 = t.root.children[1]
    for node, p in ((a, 0.4), (l1, 0.5), (l2, 0.1), (l3, 1.0)):  # reference pi_bar per step
        node.ref_logprobs = [L(p)] * len(node.token_ids)
    adv, _ = get_estimator("ibtpo")([t], AdvParams(beta=5.0, lam=0.1, ib_prob="ref"))
    # A_GL as above; A_IB with pi_ref: A (0.75-1.2)*.4 = -.18; L1 (2-1.2)*.5 = .4;
    # L2 (0-1.2)*.1 = -.12; L3 (1.5-1.2)*1 = .3
    a_step = -1 / (6 * D) + 0.1 * -0.18
    expected = [[a_step, 1 / (3 * D) + 0.04], [a_step, -2 / (3 * D) - 0.012], [1 / (3 * D) + 0.03]]
    for got, exp in zip(adv[0], expected):
        assert got == pytest.approx(exp, abs=1e-12)
    l3.ref_logprobs = None
    with pytest.raises(ValueError, match="reference log-probs"):
        get_estimator("ibtpo")([t], AdvParams(ib_prob="ref"))
    with pytest.raises(ValueError, match="ib_prob"):
        AdvParams(ib_prob="pi_ref")


def test_grpo_hand_tree():
    adv, _ = get_estimator("grpo")([hand_tree()], AdvParams())
    # (R - 2/3)/D per trajectory, on every step
    assert adv[0][0] == pytest.approx([1 / (3 * D)] * 2)
    assert adv[0][1] == pytest.approx([-2 / (3 * D)] * 2)
    assert adv[0][2] == pytest.approx([1 / (3 * D)])


def zero_var_tree():
    """root -> L1 (pi .5, R=0), root -> L2 (pi .25, R=0): A_GL = 0; A_IB = -pi/beta (r := 1)."""
    t = new_tree([0])
    add_step(t, t.root, [1], [L(0.5)], [0], terminal=True, reward=0.0)
    add_step(t, t.root, [2], [L(0.25)], [0], terminal=True, reward=None)  # None -> 0.0
    return t


def test_zero_variance_group_option():
    on, m = get_estimator("ibtpo")([zero_var_tree()], AdvParams(beta=5, lam=0.1))
    # lam * (-pi/beta): 0.1 * -0.1 = -0.01 ; 0.1 * -0.05 = -0.005
    assert on[0] == [[pytest.approx(-0.01)], [pytest.approx(-0.005)]]
    assert m["adv/zero_var_frac"] == 1.0
    off, _ = get_estimator("ibtpo")([zero_var_tree()], AdvParams(ib_adv_on_zero_var_groups=False))
    assert off[0] == [[0.0], [0.0]]
    assert get_estimator("grpo")([zero_var_tree()], AdvParams())[0][0] == [[0.0], [0.0]]


def test_single_trajectory_std_is_zero():
    t = new_tree([0])
    add_step(t, t.root, [1], [L(0.5)], [0], terminal=True, reward=1.0)
    # one trajectory: std undefined -> 0, group is all-equal -> A_GL = 0; A_IB = -0.5/5 * 0.1
    assert get_estimator("grpo")([t], AdvParams())[0] == [[[0.0]]]
    assert get_estimator("ibtpo")([t], AdvParams())[0][0][0] == [pytest.approx(-0.01)]


def test_merged_sibling_advantage():
    # root -> M (count 2, pi .5) -> {L1 R=1, L2 R=0}; root -> L3 R=0.
    # p_hat: M .5, root 1/3; std([1,0,0]) = sqrt(1/3); r(M) = 1.5 -> A_IB(M) = .3 * .5 = .15
    t = new_tree([0])
    mnode = add_step(t, t.root, [1], [L(0.5)], [0])
    mnode.count = 2
    for r in (1.0, 0.0):
        add_step(t, mnode, [2], [L(0.5)], [0], terminal=True, reward=r)
    add_step(t, t.root, [3], [L(0.5)], [0], terminal=True, reward=0.0)
    adv, _ = get_estimator("ibtpo")([t], AdvParams(lam=0.1))
    assert adv[0][0][0] == pytest.approx((0.5 - 1 / 3) / D + 0.015)
    assert adv[0][1][0] == adv[0][0][0]


@pytest.mark.parametrize("seed", range(5))
def test_chain_tree_lam0_equals_grpo_exactly(seed):
    rng = random.Random(seed)
    trees = [chain_forest([rng.choice([0.0, 1.0, 0.5]) for _ in range(rng.randint(1, 8))], rng)
             for _ in range(6)]
    ib, _ = get_estimator("ibtpo")(trees, AdvParams(lam=0.0))
    gr, _ = get_estimator("grpo")(trees, AdvParams())
    assert ib == gr                                   # exact, every step of every trajectory


def reference_ibtpo(tree, beta, lam, prob_norm, on_zero_var=True, eps=1e-4):
    """Straightforward loop over trajectories and steps."""
    ph, pb = p_hat(tree), pi_bar(tree, prob_norm)
    rewards = [0.0 if leaf.reward is None else leaf.reward for leaf in tree.leaves()]
    std = statistics.stdev(rewards) if len(rewards) > 1 else 0.0
    zero = max(rewards) == min(rewards)
    out = []
    for traj in tree.trajectories():
        row = []
        for s in traj:
            a_gl = 0.0 if zero else (ph[s] - ph[tree.root]) / (std + eps)
            r = ph[s] / ph[s.parent] if ph[s.parent] > 0 else 1.0
            a_ib = (r - (1 + 1 / beta)) * pb[s]
            row.append(a_gl + lam * (a_ib if on_zero_var or not zero else 0.0))
        out.append(row)
    return out


@pytest.mark.parametrize("prob_norm", ["mean", "sum", "sibling"])
@pytest.mark.parametrize("on_zero_var", [True, False])
def test_vectorised_matches_reference(prob_norm, on_zero_var):
    rng = random.Random(1)
    trees = []
    for _ in range(15):
        t = chain_forest([rng.choice([0.0, 1.0]) for _ in range(3)], rng)
        for _ in range(rng.randint(0, 6)):   # branch from random non-terminal nodes
            node = rng.choice(t.branchable())
            add_step(t, node, [9], [rng.uniform(-2, 0)], [0.0], terminal=True,
                     reward=rng.choice([0.0, 1.0, None]))
        trees.append(t)
    params = AdvParams(beta=3.0, lam=0.3, prob_norm=prob_norm,
                       ib_adv_on_zero_var_groups=on_zero_var)
    adv, _ = get_estimator("ibtpo")(trees, params)
    for t, got in zip(trees, adv):
        exp = reference_ibtpo(t, 3.0, 0.3, prob_norm, on_zero_var)
        assert [len(r) for r in got] == [len(r) for r in exp]
        for g, e in zip(got, exp):
            assert g == pytest.approx(e, abs=1e-9)


def test_bad_trees_raise():
    for name in ESTIMATORS:
        with pytest.raises(ValueError, match="trees"):
            get_estimator(name)([], AdvParams())
        with pytest.raises(ValueError, match="tree"):
            get_estimator(name)([new_tree([1])], AdvParams())
        t = hand_tree()
        t.leaves()[0].reward = 1.5
        with pytest.raises(ValueError, match="reward"):
            get_estimator(name)([t], AdvParams())
