"""Tests for ibtpo.core.tree: step cutting, tree growth, p_hat, pi_bar (ALGORITHM.md §1)."""

import math

import pytest

from ibtpo.core.tree import (
    Node,
    Tree,
    add_step,
    attach_response,
    new_tree,
    p_hat,
    path_to,
    pi_bar,
    split_steps,
)

# --------------------------------------------------------------------------- fake tokenizers


def char_codec():
    """Char tokenizer: token id = code point."""
    return (lambda s: [ord(c) for c in s]), (lambda ids: "".join(chr(i) for i in ids))


BPE_VOCAB = ["a", "b", ".\n\nThe", "\n", "\n\n", "x\n", "\n\n\n\n", " c", "The"]


def bpe_decode(ids):
    return "".join(BPE_VOCAB[i] for i in ids)


SP_VOCAB = ["\u2581a", "\u2581b", "\n", "\u2581c\n\n"]


def sp_decode(ids):
    """SentencePiece-like: '▁' is a space, and a leading space of the whole text is dropped, so
    lone-token decodes do not join to the full decode (forces the prefix-decode path)."""
    return "".join(SP_VOCAB[i] for i in ids).replace("\u2581", " ").lstrip(" ")


def tile_ok(spans, n):
    return spans[0][0] == 0 and spans[-1][1] == n and all(
        a[1] == b[0] and a[0] < a[1] for a, b in zip(spans, spans[1:]))


# --------------------------------------------------------------------------- split_steps


def test_split_char_tokenizer():
    enc, dec = char_codec()
    ids = enc("ab\n\ncd\n\n\nef")
    # "ab\n\n" ends at index 3; next occurrence search starts at 4: "cd\n\n" ends at 7;
    # then "\nef" has no complete delimiter -> last step (8, 11).
    assert split_steps(ids, dec) == [(0, 4), (4, 8), (8, 11)]


def test_split_char_tokenizer_ends_on_delimiter_and_no_delimiter():
    enc, dec = char_codec()
    assert split_steps(enc("a\n\n"), dec) == [(0, 3)]
    assert split_steps(enc("abc"), dec) == [(0, 3)]
    assert split_steps([], dec) == []
    # "\n\n\n\n": two non-overlapping occurrences ending at chars 1 and 3.
    assert split_steps(enc("\n\n\n\n"), dec) == [(0, 2), (2, 4)]


def test_split_folds_a_trailing_eos_only_step_into_the_step_before():
    enc, dec = char_codec()
    eos = 0  # decodes to "" (like a special token decoded with skip_special_tokens=True)
    ids = enc("ab\n\ncd\n\n") + [eos]
    # without folding: (0, 4), (4, 8), (8, 9) -- the last step would hold only EOS
    assert split_steps(ids, lambda t: dec([i for i in t if i != eos])) == [(0, 4), (4, 9)]
    assert split_steps([eos], lambda t: "") == [(0, 1)]  # a lone EOS stays one (empty) step


def test_split_bpe_delimiter_inside_larger_token():
    # tokens: "a" ".\n\nThe" " c" -> the delimiter is completed by token 1, which ends step 1.
    assert split_steps([0, 2, 7], bpe_decode) == [(0, 2), (2, 3)]


def test_split_bpe_delimiter_across_two_tokens():
    # "a" "\n" "\n" "b": the 2nd "\n" (token 2) completes the delimiter.
    assert split_steps([0, 3, 3, 1], bpe_decode) == [(0, 3), (3, 4)]
    # "x\n" "\n\n" "b": text "x\n\n\nb"; first occurrence = chars 1-2, completed by token 1;
    # the next search starts at char 3 ("\nb"): no occurrence.
    assert split_steps([5, 4, 1], bpe_decode) == [(0, 2), (2, 3)]


def test_split_bpe_two_delimiters_in_one_token():
    # "a" "\n\n\n\n" "b": both occurrences end in token 1 -> a single cut after it.
    assert split_steps([0, 6, 1], bpe_decode) == [(0, 2), (2, 3)]


def test_split_delimiter_spanning_previous_cut():
    # ".\n\nThe" "\n" "\n" "b": text ".\n\nThe\n\nb"; occurrences end at char 2 (token 0) and
    # char 6 (token 2) -> spans (0,1), (1,3), (3,4).
    assert split_steps([2, 3, 3, 1], bpe_decode) == [(0, 1), (1, 3), (3, 4)]


def test_split_prefix_decode_fallback():
    # Lone-token decodes "a" "b" "\n" "c\n\n" "a" "\n" "\n" join to "ab\nc\n\na\n\n", but the
    # full decode is "a b\n c\n\n a\n\n" -> prefix-decode path. Prefix counts of "\n\n": token 2
    # -> 0, token 3 -> 1 (cut), token 5 -> 1, token 6 -> 2 (cut).
    ids = [0, 1, 2, 3, 0, 2, 2]
    assert split_steps(ids, sp_decode) == [(0, 4), (4, 7)]


def test_split_tiles_random_responses():
    import random
    rng = random.Random(0)
    enc, dec = char_codec()
    for _ in range(50):
        text = "".join(rng.choice("ab\n") for _ in range(rng.randint(1, 30)))
        spans = split_steps(enc(text), dec)
        assert tile_ok(spans, len(text))
        pieces = [text[a:b] for a, b in spans]
        assert all(p.endswith("\n\n") for p in pieces[:-1])
        # no step contains a complete delimiter before its end
        assert all("\n\n" not in p[:-1] for p in pieces)
    for _ in range(50):
        ids = [rng.randrange(len(BPE_VOCAB)) for _ in range(rng.randint(1, 12))]
        assert tile_ok(split_steps(ids, bpe_decode), len(ids))


def test_split_custom_delimiter_and_bad_delimiter():
    enc, dec = char_codec()
    assert split_steps(enc("a;b;c"), dec, ";") == [(0, 2), (2, 4), (4, 5)]
    with pytest.raises(ValueError, match="delimiter"):
        split_steps(enc("a"), dec, "")


# --------------------------------------------------------------------------- growing trees


def lp(n, v=-0.5):
    return [v] * n


def test_attach_response_builds_chain():
    enc, dec = char_codec()
    tree = new_tree([1, 2], prompt="q", meta={"answer": "4"})
    ids = enc("ab\n\ncd")
    leaf = attach_response(tree, tree.root, ids, lp(6), lp(6, 1.0), "eos", dec)
    assert leaf.terminal and leaf.stop_reason == "eos" and leaf.depth == 2
    path = path_to(leaf)
    assert [s.text for s in path] == ["ab\n\n", "cd"]
    assert not path[0].terminal and path[0].stop_reason is None
    assert tree.response_ids(leaf) == ids
    assert tree.prefix_ids(path[0]) == [1, 2] + enc("ab\n\n")
    assert tree.response_text(leaf) == "ab\n\ncd"
    assert tree.num_generated_tokens() == 6
    assert tree.meta == {"answer": "4"}


def test_branch_and_orders():
    enc, dec = char_codec()
    tree = new_tree([1])
    l1 = attach_response(tree, tree.root, enc("a\n\nb\n\nc"), lp(7), lp(7), "eos", dec)
    mid = path_to(l1)[0]
    l2 = attach_response(tree, mid, enc("x"), lp(1), lp(1), "length", dec)
    l3 = attach_response(tree, tree.root, enc("z"), lp(1), lp(1), "eos", dec)
    assert tree.leaves() == [l1, l2, l3]           # creation order
    assert tree.trajectories()[1] == [mid, l2]
    assert tree.nodes()[0] is tree.root and len(tree.nodes()) == 6
    assert tree.branchable() == [tree.root, mid, path_to(l1)[1]]
    assert tree.num_generated_tokens() == 7 + 1 + 1


def test_empty_continuation_creates_empty_leaf():
    _, dec = char_codec()
    tree = new_tree([1])
    leaf = attach_response(tree, tree.root, [], [], [], "length", dec)
    assert leaf.terminal and leaf.token_ids == [] and tree.leaves() == [leaf]
    assert tree.num_generated_tokens() == 0


def test_merge_identical_steps_counts_and_tokens():
    enc, dec = char_codec()
    tree = new_tree([1])
    a = attach_response(tree, tree.root, enc("s\n\nx"), lp(4), lp(4), "eos", dec,
                        merge_identical_steps=True)
    b = attach_response(tree, tree.root, enc("s\n\ny"), lp(4), lp(4), "eos", dec,
                        merge_identical_steps=True)
    # Terminal duplicates are never merged: "s\n\nx" twice gives two leaves under the merged step.
    c = attach_response(tree, tree.root, enc("s\n\nx"), lp(4), lp(4), "eos", dec,
                        merge_identical_steps=True)
    assert len(tree.root.children) == 1
    step = tree.root.children[0]
    assert step.count == 3 and step.children == [a, b, c]
    assert tree.num_generated_tokens() == 12          # merged steps were still generated
    assert len(tree.trajectories()) == 3
    # Without merging: three separate first steps.
    t2 = new_tree([1])
    for s in ["s\n\nx", "s\n\ny"]:
        attach_response(t2, t2.root, enc(s), lp(4), lp(4), "eos", dec)
    assert len(t2.root.children) == 2 and all(c.count == 1 for c in t2.root.children)


def test_terminal_first_step_not_merged():
    enc, dec = char_codec()
    tree = new_tree([1])
    for _ in range(2):
        attach_response(tree, tree.root, enc("ab"), lp(2), lp(2), "eos", dec,
                        merge_identical_steps=True)
    assert len(tree.root.children) == 2


def test_bad_inputs_raise():
    enc, dec = char_codec()
    tree = new_tree([1])
    with pytest.raises(ValueError, match="logprobs/entropies"):
        attach_response(tree, tree.root, enc("ab"), lp(1), lp(2), "eos", dec)
    with pytest.raises(ValueError, match="stop_reason"):
        attach_response(tree, tree.root, enc("ab"), lp(2), lp(2), "done", dec)
    leaf = attach_response(tree, tree.root, enc("ab"), lp(2), lp(2), "eos", dec)
    with pytest.raises(ValueError, match="parent"):
        add_step(tree, leaf, [1], [0.0], [0.0])


# --------------------------------------------------------------------------- p_hat / pi_bar


def small_tree():
    """root -> A (non-terminal) -> {L1 r=1, L2 r=0};  root -> L3 r=None (counts as 0).
    Log-probs: A: [-1, -3]; L1: [-2]; L2: [-1, -1, -4]; L3: [-0.5, -1.5]."""
    tree = new_tree([0])
    a = add_step(tree, tree.root, [1, 2], [-1.0, -3.0], [0.0, 0.0])
    l1 = add_step(tree, a, [3], [-2.0], [0.0], terminal=True, reward=1.0)
    l2 = add_step(tree, a, [4, 5, 6], [-1.0, -1.0, -4.0], [0.0] * 3, terminal=True, reward=0.0)
    l3 = add_step(tree, tree.root, [7, 8], [-0.5, -1.5], [0.0] * 2, terminal=True, reward=None)
    return tree, a, l1, l2, l3


def test_p_hat_hand_values():
    tree, a, l1, l2, l3 = small_tree()
    p = p_hat(tree)
    # A: mean(1, 0) = 0.5; root: mean(1, 0, 0) = 1/3; leaves = their rewards (None -> 0).
    assert p[a] == pytest.approx(0.5) and p[tree.root] == pytest.approx(1 / 3)
    assert (p[l1], p[l2], p[l3]) == (1.0, 0.0, 0.0)


def test_p_hat_with_merged_node_uses_trajectories():
    enc, dec = char_codec()
    tree = new_tree([1])
    rewards = [1.0, 0.0, 0.0]
    for s, r in zip(["s\n\nx", "s\n\ny", "z"], rewards):
        attach_response(tree, tree.root, enc(s), lp(len(s)), lp(len(s)), "eos", dec,
                        merge_identical_steps=True).reward = r
    p = p_hat(tree)
    # merged "s\n\n" (count 2) carries 2 trajectories: mean(1, 0) = 0.5; root mean(1,0,0) = 1/3.
    assert p[tree.root.children[0]] == pytest.approx(0.5)
    assert p[tree.root] == pytest.approx(1 / 3)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_p_hat_bad_reward(bad):
    tree, *_ , l3 = small_tree()
    l3.reward = bad
    with pytest.raises(ValueError, match="reward"):
        p_hat(tree)


def test_p_hat_empty_tree():
    with pytest.raises(ValueError, match="tree"):
        p_hat(new_tree([1]))


def test_pi_bar_mean_sum_sibling():
    tree, a, l1, l2, l3 = small_tree()
    m = pi_bar(tree, "mean")
    # mean: A exp(-2), L1 exp(-2), L2 exp(-6/3) = exp(-2), L3 exp(-1)
    assert m[a] == pytest.approx(math.exp(-2)) and m[l2] == pytest.approx(math.exp(-2))
    assert m[l3] == pytest.approx(math.exp(-1)) and tree.root not in m
    s = pi_bar(tree, "sum")
    # sum: A exp(-4), L1 exp(-2), L2 exp(-6), L3 exp(-2)
    assert s[a] == pytest.approx(math.exp(-4)) and s[l2] == pytest.approx(math.exp(-6))
    g = pi_bar(tree, "sibling")
    # siblings {A, L3}: exp(-4)/(exp(-4)+exp(-2)) ; {L1, L2}: exp(-2)/(exp(-2)+exp(-6))
    assert g[a] == pytest.approx(math.exp(-4) / (math.exp(-4) + math.exp(-2)))
    assert g[l1] == pytest.approx(1 / (1 + math.exp(-4)))
    assert g[l1] + g[l2] == pytest.approx(1.0)


def test_pi_bar_sibling_no_underflow_and_empty_step():
    tree = new_tree([0])
    x = add_step(tree, tree.root, [1] * 1000, [-1.0] * 1000, [0.0] * 1000, terminal=True, reward=1)
    add_step(tree, tree.root, [2] * 1000, [-1.0] * 1000, [0.0] * 1000, terminal=True, reward=0)
    e = add_step(tree, tree.root, [], [], [], terminal=True, reward=0)
    g = pi_bar(tree, "sibling")
    # raw products exp(-1000) each (0 in floats), empty step exp(0) = 1 -> x, y ~ 0, e ~ 1
    assert g[e] == pytest.approx(1.0) and g[x] == pytest.approx(0.0)
    t2 = new_tree([0])
    a = add_step(t2, t2.root, [1] * 1000, [-1.0] * 1000, [0.0] * 1000, terminal=True, reward=1)
    b = add_step(t2, t2.root, [2] * 1000, [-1.0] * 1000, [0.0] * 1000, terminal=True, reward=0)
    g2 = pi_bar(t2, "sibling")
    assert g2[a] == pytest.approx(0.5) and g2[b] == pytest.approx(0.5)
    assert pi_bar(tree, "mean")[e] == 1.0  # empty step: exp(0)


def test_pi_bar_bad_norm():
    tree, *_ = small_tree()
    with pytest.raises(ValueError, match="prob_norm"):
        pi_bar(tree, "max")


def test_node_is_identity_hashable():
    a, b = Node([1], [0.0], [0.0]), Node([1], [0.0], [0.0])
    assert a != b and len({a: 1, b: 2}) == 2
    assert isinstance(new_tree([1]), Tree)
