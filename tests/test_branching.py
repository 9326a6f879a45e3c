"""Tests for ibtpo.core.branching (ALGORITHM.md §3): scorers, candidates, top-K with seeded ties."""

import math
import random

import pytest

from ibtpo.core.branching import SCORERS, BranchParams, get_scorer, select_nodes
from ibtpo.core.tree import add_step, new_tree

L = math.log


def hand_tree():
    """root -> A (pi 0.5, entropies [1, 3]) -> {L1 pi .25 r=1, L2 pi .5 r=0};
    root -> L3 (pi 0.8, r=1, entropy 9). IB (beta 5): root 0.0075, A -0.2 (see test_ib_score)."""
    t = new_tree([0])
    a = add_step(t, t.root, [1, 2], [L(0.5)] * 2, [1.0, 3.0])
    add_step(t, a, [3], [L(0.25)], [5.0], terminal=True, reward=1.0)
    add_step(t, a, [4], [L(0.5)], [7.0], terminal=True, reward=0.0)
    add_step(t, t.root, [5], [L(0.8)], [9.0], terminal=True, reward=1.0)
    return t, a


def chains(n_chains=3, n_steps=3):
    """n_chains independent chains from the root, each n_steps steps (last one terminal)."""
    t = new_tree([0])
    for _ in range(n_chains):
        node = t.root
        for d in range(n_steps):
            last = d == n_steps - 1
            node = add_step(t, node, [1], [-1.0], [0.5], terminal=last,
                            reward=0.0 if last else None)
    return t


def test_registry_and_bad_name():
    assert set(SCORERS) == {"ib", "entropy", "random", "width", "independent"}
    assert get_scorer("ib") is SCORERS["ib"]
    with pytest.raises(ValueError, match="scorer.*'entropy'"):
        get_scorer("ibx")


def test_bad_params():
    with pytest.raises(ValueError, match="beta"):
        BranchParams(beta=0.0)
    with pytest.raises(ValueError, match="prob_norm"):
        BranchParams(prob_norm="max")


def test_ib_scorer_picks_root_or_a():
    t, a = hand_tree()
    rng = random.Random(0)
    s = get_scorer("ib")(t, BranchParams(), rng)
    assert set(s) == {t.root, a}                          # terminal nodes are never candidates
    assert s[t.root] == pytest.approx(0.0075) and s[a] == pytest.approx(-0.2)
    assert select_nodes(s, 1, rng) == [t.root]            # 0.0075 > -0.2
    s2 = get_scorer("ib")(t, BranchParams(branch_from_root=False), rng)
    assert list(s2) == [a] and select_nodes(s2, 1, rng) == [a]


def test_entropy_scorer_scores_the_step_a_branch_resamples():
    t, a = hand_tree()
    s = get_scorer("entropy")(t, BranchParams(), random.Random(0))
    # a branch from A resamples A's child step: mean(5 [L1], 7 [L2]) = 6 (A's own step, mean 2,
    # is not resampled); from the root: mean(2 [A's step], 9 [L3's]) = 5.5 -> A is picked
    assert s == {t.root: pytest.approx(5.5), a: pytest.approx(6.0)}
    assert select_nodes(s, 1, random.Random(0)) == [a]
    assert get_scorer("entropy")(t, BranchParams(branch_from_root=False),
                                 random.Random(0)) == {a: 6.0}


def test_entropy_scorer_counts_merged_children():
    t = new_tree([0])
    a = add_step(t, t.root, [1], [0.0], [1.0])
    add_step(t, a, [2], [0.0], [2.0], terminal=True, reward=0.0)
    b = add_step(t, t.root, [3], [0.0], [4.0])
    b.count = 3  # sampled three times from the root, merged into one node
    add_step(t, b, [4], [0.0], [0.0], terminal=True, reward=1.0)
    # root: (1 * 1.0 + 3 * 4.0) / 4 = 3.25
    assert get_scorer("entropy")(t, BranchParams(), random.Random(0))[t.root] == pytest.approx(3.25)


def test_width_scorer_breadth_first():
    t = chains(3, 3)
    s = get_scorer("width")(t, BranchParams(), random.Random(0))
    lvl1 = t.root.children
    # max depth 3 -> root -(3 + 0) = -3; depth-1 nodes -(1 + 1/4); depth-2 nodes -(1 + 2/4)
    assert s[t.root] == pytest.approx(-3.0)
    assert all(s[n] == pytest.approx(-1.25) for n in lvl1)
    assert all(s[n.children[0]] == pytest.approx(-1.5) for n in lvl1)
    picked = select_nodes(s, 1, random.Random(0))
    assert picked[0] in lvl1
    assert all(not n.terminal for n in s)


def test_random_and_independent():
    t = chains(2, 2)
    s = get_scorer("random")(t, BranchParams(), random.Random(1))
    assert set(s) == set(t.branchable()) and len(s) == 3
    assert get_scorer("independent")(t, BranchParams(), random.Random(1)) == {}
    assert select_nodes({}, 2, random.Random(0)) == []


def test_terminal_nodes_never_candidates_all_scorers():
    t, _ = hand_tree()
    for name, scorer in SCORERS.items():
        for from_root in (True, False):
            s = scorer(t, BranchParams(branch_from_root=from_root), random.Random(0))
            assert all(not n.terminal for n in s), name
            assert from_root or t.root not in s, name


def test_select_nodes_top_k_and_ties():
    nodes = [object() for _ in range(4)]
    scores = {nodes[0]: 1.0, nodes[1]: 3.0, nodes[2]: 3.0, nodes[3]: 2.0}
    top2 = select_nodes(scores, 2, random.Random(0))
    assert set(top2) == {nodes[1], nodes[2]}
    # k = 1 among a tie: the seed decides, reproducibly, and both sides get picked over seeds
    picks = [select_nodes(scores, 1, random.Random(seed))[0] for seed in range(40)]
    assert set(picks) == {nodes[1], nodes[2]}
    assert picks == [select_nodes(scores, 1, random.Random(seed))[0] for seed in range(40)]
    assert select_nodes(scores, 10, random.Random(0))[2:] == [nodes[3], nodes[0]]
    with pytest.raises(ValueError, match="k"):
        select_nodes(scores, -1, random.Random(0))
    with pytest.raises(ValueError, match="scores"):
        select_nodes({nodes[0]: float("nan")}, 1, random.Random(0))
