"""Tests for ibtpo.training.batch: trees -> right-padded rows with aligned log-probs and
advantages."""

import pytest
import torch

from ibtpo.core.tree import add_step, new_tree
from ibtpo.training.batch import from_trees

PAD = 0


def hand_tree():
    """prompt [1, 2]; root -> a [5, 6] -> leaf b [7] (eos); a -> leaf c [8, 9, 3] (eos).

    Trajectories in creation order: (a, b) then (a, c).
    """
    tree = new_tree([1, 2], prompt="q")
    a = add_step(tree, tree.root, [5, 6], [-0.5, -0.6], [1.0, 1.0])
    add_step(tree, a, [7], [-0.7], [1.0], terminal=True, stop_reason="eos", reward=1.0)
    add_step(tree, a, [8, 9, 3], [-0.8, -0.9, -0.3], [1.0, 1.0, 1.0], terminal=True,
             stop_reason="eos", reward=0.0)
    return tree


def chain_tree():
    """prompt [4]; root -> leaf d [11] (length)."""
    tree = new_tree([4])
    add_step(tree, tree.root, [11], [-1.1], [0.5], terminal=True, stop_reason="length", reward=0.5)
    return tree


ADV = [[[0.1, 0.2], [0.1, -0.3]], [[0.4]]]


def test_rows_by_hand():
    b = from_trees([hand_tree(), chain_tree()], ADV, PAD)
    # rows: [1 2 5 6 7], [1 2 5 6 8 9 3], [4 11]; width 7
    assert b.input_ids.tolist() == [[1, 2, 5, 6, 7, 0, 0], [1, 2, 5, 6, 8, 9, 3],
                                    [4, 11, 0, 0, 0, 0, 0]]
    assert b.attention_mask.tolist() == [[1] * 5 + [0] * 2, [1] * 7, [1, 1] + [0] * 5]
    assert b.response_mask.tolist() == [[0, 0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1],
                                        [0, 1, 0, 0, 0, 0, 0]]
    expected_lp = [[0, 0, -0.5, -0.6, -0.7, 0, 0], [0, 0, -0.5, -0.6, -0.8, -0.9, -0.3],
                   [0, -1.1, 0, 0, 0, 0, 0]]
    torch.testing.assert_close(b.old_logprobs, torch.tensor(expected_lp))
    # step a's advantage (0.1) on both its tokens in both rows; b 0.2; c -0.3 on 3 tokens; d 0.4
    expected_adv = [[0, 0, 0.1, 0.1, 0.2, 0, 0], [0, 0, 0.1, 0.1, -0.3, -0.3, -0.3],
                    [0, 0.4, 0, 0, 0, 0, 0]]
    torch.testing.assert_close(b.advantages, torch.tensor(expected_adv))
    assert b.input_ids.dtype == torch.long and b.response_mask.dtype == torch.float32


def test_len_slice_and_to():
    b = from_trees([hand_tree(), chain_tree()], ADV, PAD)
    assert len(b) == 3
    mb = b.slice(1, 3)
    assert len(mb) == 2
    assert torch.equal(mb.input_ids, b.input_ids[1:3])
    assert torch.equal(mb.advantages, b.advantages[1:3])
    moved = b.to("cpu")
    assert torch.equal(moved.old_logprobs, b.old_logprobs)


def test_empty_response_row_has_no_trained_tokens():
    tree = new_tree([1, 2, 3])
    add_step(tree, tree.root, [], [], [], terminal=True, stop_reason="length", reward=0.0)
    b = from_trees([tree], [[[0.7]]], PAD)
    assert b.input_ids.tolist() == [[1, 2, 3]]
    assert b.response_mask.sum().item() == 0
    assert b.advantages.abs().sum().item() == 0


@pytest.mark.parametrize("adv, where", [
    ([[[0.1, 0.2], [0.1, -0.3]]], r"advantages: expected 2 trees"),
    ([[[0.1, 0.2]], [[0.4]]], r"advantages\[0\]: expected 2 trajectories"),
    ([[[0.1, 0.2], [0.1]], [[0.4]]], r"advantages\[0\]\[1\]: expected 2 steps"),
])
def test_misshapen_advantages_raise(adv, where):
    with pytest.raises(ValueError, match=where):
        from_trees([hand_tree(), chain_tree()], adv, PAD)


def test_response_mask_sum_equals_response_tokens():
    """Shared prefix tokens count once per trajectory: (2 + 1) + (2 + 3) + 1 = 9."""
    trees = [hand_tree(), chain_tree()]
    b = from_trees(trees, ADV, PAD)
    assert b.response_mask.sum().item() == 9
    assert sum(len(t.response_ids(leaf)) for t in trees for leaf in t.leaves()) == 9
