"""Tests for ibtpo.training.packing: packed trees give the unpacked logits, loss and gradients."""

import random

import pytest
import torch

from ibtpo.config import load_config, resolve_config_path
from ibtpo.core.advantages import AdvParams, get_estimator
from ibtpo.core.tree import add_step, attach_response, new_tree
from ibtpo.training import batch as padded
from ibtpo.training.logprobs import sequence_logprobs
from ibtpo.training.packing import (
    assign_advantages,
    assign_rows,
    layout_tree,
    node_values,
    pack_trees,
    trajectory_tokens,
    tree_attention_mask,
    tree_mask_mod,
)
from ibtpo.training.trainer import Trainer

PAD = 0
AGG_MODES = ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"]


def hand_tree():
    """prompt [1, 2]; root -> a [5, 6] -> b [7] (leaf), a -> c [8, 9] (leaf); root -> d [4] (leaf).

    Pre-order layout: 1 2 | 5 6 | 7 | 8 9 | 4   (indices 0..7)
    """
    tree = new_tree([1, 2])
    a = add_step(tree, tree.root, [5, 6], [-0.5, -0.6], [1.0, 1.0])
    add_step(tree, a, [7], [-0.7], [1.0], terminal=True, stop_reason="eos", reward=1.0)
    add_step(tree, a, [8, 9], [-0.8, -0.9], [1.0, 1.0], terminal=True, stop_reason="eos",
             reward=0.0)
    add_step(tree, tree.root, [4], [-0.4], [1.0], terminal=True, stop_reason="eos", reward=1.0)
    return tree


def test_layout_by_hand():
    lay = layout_tree(hand_tree())
    assert lay.ids == [1, 2, 5, 6, 7, 8, 9, 4]
    # positions: a continues the prompt (2, 3); b and c both follow a (4; 4, 5); d follows the
    # prompt (2)
    assert lay.position_ids == [0, 1, 2, 3, 4, 4, 5, 2]
    # subtree ends: prompt -> 8 (whole tree); a's subtree = a, b, c -> 7; b -> 5; c -> 7; d -> 8
    assert lay.span_end == [8, 8, 7, 7, 5, 7, 7, 8]
    # 5 is predicted by the prompt's last token (1); 7 and 8 by a's last token (3); 4 by 1
    assert lay.logit_index[2:] == [1, 2, 3, 3, 5, 1]
    assert lay.token_node == [-1, -1, 0, 0, 1, 2, 2, 3]


def test_mask_by_hand():
    lay = layout_tree(hand_tree())
    mask = tree_attention_mask(torch.tensor([lay.span_end]))[0, 0]
    # c's first token (index 5) sees the prompt (0, 1), a (2, 3) and itself, not b (4)
    assert mask[5].tolist() == [True, True, True, True, False, True, False, False]
    # d (index 7) sees the prompt and itself only
    assert mask[7].tolist() == [True, True, False, False, False, False, False, True]


def test_flex_mask_mod_equals_the_boolean_mask():
    from torch.nn.attention.flex_attention import create_mask

    b = pack_trees([hand_tree(), hand_tree(), hand_tree()], PAD, pack_tokens=16)
    r, length = b.span_end.shape
    dense = create_mask(tree_mask_mod(b.span_end), r, None, length, length, device="cpu")
    assert torch.equal(dense, tree_attention_mask(b.span_end))


def test_assign_rows_first_fit_decreasing():
    # sizes 5, 3, 4, 2 with limit 7: 5 -> row 0; 4 -> row 1; 3 -> row 1 (7); 2 -> row 0 (7)
    assert assign_rows([5, 3, 4, 2], 7) == [[0, 3], [2, 1]]
    assert assign_rows([9, 1], 4) == [[0], [1]]  # a tree larger than the limit gets its own row


def test_pack_trees_rows_and_padding():
    trees = [hand_tree(), hand_tree(), hand_tree()]
    b = pack_trees(trees, PAD, pack_tokens=16)  # 8 tokens each: two trees in row 0, one in row 1
    assert b.input_ids.shape == (2, 16) and b.row_length.tolist() == [16, 8]
    assert b.input_ids[1, 8:].tolist() == [PAD] * 8
    assert b.span_end[1, 8:].tolist() == list(range(9, 17))  # padding sees itself only
    assert b.span_end[0, 8:].tolist() == [16, 16, 15, 15, 13, 15, 15, 16]  # offset by 8
    assert b.num_tokens == 32 and trajectory_tokens(trees) == 3 * (5 + 6 + 3)
    assert len(b.nodes) == 12 and sorted(tree_rows(b)) == [0, 0, 1]


def tree_rows(batch):
    """The row of each tree (of its first trajectory)."""
    return [tree[0][0] for tree in batch.trajectories]


def char_ids(tok, text):
    return tok.encode(text, add_special_tokens=False)


def random_trees(tok, seed: int, n_trees: int = 4, merge: bool = True):
    """Trees of the built-in tokenizer's text: steps drawn from a few strings, so identical
    siblings occur and are merged; old log-probs with ratios from e^-1 to e^1, random rewards."""
    rng = random.Random(seed)
    steps = ["1+2=3\n\n", "3+4=7\n\n", "7-1=6\n\n"]
    ends = ["answer: 6", "answer: 7", "x"]
    decode = lambda ids: tok.decode(ids)  # noqa: E731
    trees = []
    for p in range(n_trees):
        tree = new_tree([tok.bos_token_id] + char_ids(tok, f"{p + 1}+{p}-1=?\n"))
        for i in range(rng.randint(3, 5)):
            candidates = tree.branchable()
            node = candidates[rng.randrange(len(candidates))] if rng.random() < 0.6 else tree.root
            first = steps[0] if i < 2 else ""  # the first two responses share (merge) a step
            node = tree.root if i < 2 else node
            middle = "".join(rng.choice(steps) for _ in range(rng.randint(0, 2)))
            text = first + middle + rng.choice(ends)
            ids = char_ids(tok, text) + [tok.eos_token_id]
            lps = [-rng.uniform(3.6, 5.6) for _ in ids]  # the model gives ~ -4.6 = log(1/104)
            leaf = attach_response(tree, node, ids, lps, [1.0] * len(ids), "eos", decode,
                                   merge_identical_steps=merge)
            leaf.reward = float(rng.random() < 0.5)
        if p == 0:  # an empty response (a leaf with no tokens) counts as a trajectory too
            attach_response(tree, tree.root, [], [], [], "length", decode).reward = 0.0
        trees.append(tree)
    return trees


def make_trainer(out, agg_mode: str, estimator: str, **train):
    """A nano trainer with an entropy bonus and a reference that differs from the policy
    (so the KL term has a gradient)."""
    extra = [f"train.{k}={v}" for k, v in train.items()]
    cfg = load_config(overrides=["train.init=nano", f"loss.agg_mode={agg_mode}",
                                 f"advantage.estimator={estimator}", "loss.entropy_coef=0.01",
                                 "loss.beta_kl=0.1", "train.tensorboard=false", "task.eval_size=4",
                                 "eval.size=4", f"train.out_dir={out}", *extra])
    trainer = Trainer(cfg, progress=False)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in trainer.ref_model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return trainer


def loss_and_grad(trainer, trees, advantages):
    """Accumulated loss and flat gradient over the trainer's micro-batches, as `update` does."""
    batch = trainer.make_batch(trees)
    trainer.reference_logprobs(batch)
    batch = trainer.assign_advantages(batch, trees, advantages)
    trainer.model.zero_grad(set_to_none=True)
    total, n_micro = 0.0, 0
    for mb, weight in trainer.micro_batches(batch):
        loss, _ = trainer.micro_step(mb)
        (loss * weight).backward()
        total += float(loss.detach() * weight)
        n_micro += 1
    grad = torch.cat([p.grad.flatten() for p in trainer.model.parameters()])
    return total, grad, n_micro, batch


@pytest.mark.parametrize("unroll", ["never", "always"])
@pytest.mark.parametrize("estimator", ["grpo", "ibtpo"])
@pytest.mark.parametrize("agg_mode", AGG_MODES)
def test_packed_loss_and_gradient_equal_unpacked(char_tokenizer, tmp_path, estimator, agg_mode,
                                                 unroll):
    """Packed trees (`unroll=never`) and trees unrolled into one chain per trajectory, several
    per row (`always`), against one padded row per trajectory."""
    trees = random_trees(char_tokenizer, seed=AGG_MODES.index(agg_mode))
    assert any(n.count > 1 for t in trees for n in t.nodes())  # merged siblings occur
    advantages, _ = get_estimator(estimator)(trees, AdvParams())
    sizes = sorted(len(layout_tree(t).ids) for t in trees)
    # rows of the two largest trees' size: the largest two share row 0, one row per micro-batch
    limit = sizes[-1] + sizes[-2]
    unpacked = make_trainer(tmp_path, agg_mode, estimator, pack_trees="false", micro_batch_size=4)
    packed = make_trainer(tmp_path, agg_mode, estimator, pack_trees="true", pack_tokens=limit,
                          micro_batch_tokens=limit, pack_unroll=unroll)
    loss_u, grad_u, micro_u, _ = loss_and_grad(unpacked, trees, advantages)
    loss_p, grad_p, micro_p, batch = loss_and_grad(packed, trees, advantages)
    assert micro_u > 1 and micro_p > 1  # micro-batches on both sides
    if unroll == "never":
        assert tree_rows(batch).count(0) > 1  # several trees in a row
    else:
        assert len(batch.nodes) > sum(len(t.nodes()) - 1 for t in trees)  # shared steps repeat
    assert abs(loss_p - loss_u) < 1e-5, (loss_p, loss_u)
    torch.testing.assert_close(grad_p, grad_u, atol=1e-5, rtol=1e-4)
    assert grad_u.abs().max() > 1e-3  # a gradient that could have differed


def test_grpo_advantage_on_a_tree_has_mixed_signs_on_shared_tokens(char_tokenizer):
    """The case the pos/neg split exists for: some token carries both signs."""
    trees = random_trees(char_tokenizer, seed=0)
    advantages, _ = get_estimator("grpo")(trees, AdvParams())
    batch = pack_trees(trees, PAD, 140)
    assign_advantages(batch, trees, advantages, "token-mean")
    both = (batch.pos_weight > 0) & (batch.neg_weight > 0)
    assert both.any()
    # count = trajectories through a token; response tokens: count_pos + count_neg <= count
    assert torch.all(batch.count_pos + batch.count_neg <= batch.count)
    unpacked = padded.from_trees(trees, advantages, PAD)
    assert batch.count.sum() == unpacked.response_mask.sum()


@pytest.mark.parametrize("estimator", ["grpo", "ibtpo"])
def test_packed_metrics_equal_unpacked_in_one_micro_batch(char_tokenizer, tmp_path, estimator):
    trees = random_trees(char_tokenizer, seed=3)
    advantages, _ = get_estimator(estimator)(trees, AdvParams())
    metrics = []
    for train in ({"pack_trees": "false"},  # every tree in one packed row: one micro-batch
                  {"pack_trees": "true", "pack_tokens": 100000, "pack_unroll": "never"}):
        trainer = make_trainer(tmp_path, "seq-mean-token-mean", estimator, **train)
        batch = trainer.make_batch(trees)
        trainer.reference_logprobs(batch)
        batch = trainer.assign_advantages(batch, trees, advantages)
        (mb, weight), = list(trainer.micro_batches(batch))
        with torch.no_grad():
            metrics.append(trainer.micro_step(mb)[1])
    assert metrics[0]["loss/clipfrac_low"] > 0 and metrics[0]["loss/clipfrac_high"] > 0
    for k in metrics[0]:
        assert abs(float(metrics[0][k]) - float(metrics[1][k])) < 1e-5, k


def test_packed_logits_equal_unpacked(char_tokenizer, tiny_model):
    trees = random_trees(char_tokenizer, seed=5)
    batch = pack_trees(trees, PAD, 200)
    with torch.no_grad():
        logits = tiny_model(input_ids=batch.input_ids,
                            attention_mask=tree_attention_mask(batch.span_end),
                            position_ids=batch.position_ids, use_cache=False).logits
    where = {}
    for r in range(len(batch)):
        for t in range(int(batch.row_length[r])):
            where.setdefault(int(batch.token_node[r, t]), []).append((r, t))
    checked = 0
    for tree in trees:
        for leaf in tree.leaves():
            ids = tree.prompt_ids + tree.response_ids(leaf)
            with torch.no_grad():
                full = tiny_model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
            t = len(tree.prompt_ids)
            for step in [n for n in _path(leaf)]:
                e = batch.nodes.index(step)
                for r, c in where.get(e, []):  # an empty step has no position
                    torch.testing.assert_close(logits[r, c], full[t], atol=1e-5, rtol=0)
                    t += 1
                    checked += 1
    assert checked > 100


def _path(leaf):
    out = []
    while leaf.parent is not None:
        out.append(leaf)
        leaf = leaf.parent
    return out[::-1]


def test_packed_logprobs_and_node_values(char_tokenizer, tiny_model):
    trees = random_trees(char_tokenizer, seed=6)
    batch = pack_trees(trees, PAD, 1000)
    with torch.no_grad():
        logp, ent = sequence_logprobs(tiny_model, entropy="metric", **batch.model_inputs())
    per_node = node_values(batch, logp)
    tree = trees[0]
    leaf = tree.leaves()[-1]
    ids = tree.prompt_ids + tree.response_ids(leaf)
    mask = torch.ones(1, len(ids), dtype=torch.long)
    with torch.no_grad():
        want, want_ent = sequence_logprobs(tiny_model, torch.tensor([ids]), mask)
    got = torch.cat([per_node[s] for s in _path(leaf)])
    torch.testing.assert_close(got, want[0, len(tree.prompt_ids):], atol=1e-5, rtol=0)
    got_ent = torch.cat(list(node_values(batch, ent)[s] for s in _path(leaf)))
    torch.testing.assert_close(got_ent, want_ent[0, len(tree.prompt_ids):], atol=1e-5, rtol=0)


def test_agg_mode_mismatch_is_an_error(char_tokenizer):
    trees = random_trees(char_tokenizer, seed=0)
    adv, _ = get_estimator("ibtpo")(trees, AdvParams())
    batch = assign_advantages(pack_trees(trees, PAD), trees, adv, "token-mean")
    with pytest.raises(ValueError, match="agg_mode"):
        batch.agg_count("seq-mean-token-mean")
    with pytest.raises(ValueError, match="max_response_len"):
        assign_advantages(pack_trees(trees, PAD), trees, adv, "seq-mean-token-sum-norm")


@pytest.mark.parametrize("name", ["grpo", "ibtpo"])
def test_first_pass_ratio_is_one_on_sampled_trees(tmp_path, name):
    """The engine's sampled log-probs equal the packed training forward's: ratio 1 within 1e-3
    (measured max |ratio - 1| ~1e-6 in fp32)."""
    cfg = load_config([resolve_config_path(name)], [
        "train.init=nano", "train.prompts_per_step=3", "sampling.max_new_tokens=16",
        "train.tensorboard=false", f"train.out_dir={tmp_path}", "task.eval_size=4", "eval.size=4"])
    trainer = Trainer(cfg, progress=False)
    problems = trainer.task.train_batch(3, trainer.problem_rng)
    trees, _ = trainer.rollout(problems)
    batch = trainer.make_batch(trees)
    with torch.no_grad():
        logp, _ = sequence_logprobs(trainer.model, entropy=None, **batch.model_inputs())
    trained = batch.token_node >= 0
    ratio = torch.exp(logp - batch.old_logprobs)[trained]
    assert trained.sum() > 50 and (ratio - 1).abs().max() < 1e-3


def test_step_ref_logprobs_come_from_the_packed_reference_forward(char_tokenizer, tmp_path):
    """A_IB with pi_ref (advantage.ib_prob=ref) reads the step's reference forward over the packed
    trees; it equals the padded per-trajectory forward of `training.reference`."""
    from ibtpo.training.reference import fill_ref_logprobs

    trees = random_trees(char_tokenizer, seed=7)
    trainer = make_trainer(tmp_path, "token-mean", "ibtpo")
    batch = trainer.make_batch(trees)
    trainer.reference_logprobs(batch)
    trainer.fill_step_ref_logprobs(batch, trees)
    steps = [n for t in trees for n in t.nodes() if n.parent is not None]
    packed = [list(n.ref_logprobs) for n in steps]
    for n in steps:
        n.ref_logprobs = None
    fill_ref_logprobs(trainer.ref_model, trees, PAD, 1.0, 64)
    for n, got in zip(steps, packed):
        assert len(got) == len(n.token_ids)
        torch.testing.assert_close(torch.tensor(got), torch.tensor(n.ref_logprobs), atol=1e-5,
                                   rtol=0)


def test_bf16_autocast_with_recomputed_old_logprobs_starts_at_ratio_one(tmp_path):
    """bf16 autocast moves the first ratio off 1 (~1e-3 measured) when the old log-probs come from
    the fp32 sampler; recomputed with the same (packed, bf16) training forward it is 1."""
    cfg = load_config([resolve_config_path("ibtpo")], [
        "train.init=nano", "train.prompts_per_step=3", "sampling.max_new_tokens=16",
        "train.tensorboard=false", f"train.out_dir={tmp_path}", "task.eval_size=4", "eval.size=4",
        "train.autocast=bf16", "train.recompute_old_logprobs=true"])
    metrics = Trainer(cfg, progress=False).train_step()
    assert abs(metrics["loss/ratio_mean"] - 1.0) < 1e-6 and metrics["loss/clipfrac"] == 0.0


def test_unroll_pays_for_long_independent_responses_on_a_narrow_model():
    """A prompt of 2 tokens and 8 responses of 100 (a GRPO group): packed, one row of 802 tokens;
    unrolled, 8 rows of 102. With a token worth 384 pairs (hidden size 128): 802 + 802^2 / 384
    = 2477 > 8 * (102 + 102^2 / 384) = 1033, so unroll."""
    from ibtpo.training.packing import unroll_pays

    group = new_tree([1, 2])
    for _ in range(8):
        add_step(group, group.root, [5] * 100, [-1.0] * 100, [1.0] * 100, terminal=True,
                 stop_reason="length", reward=0.0)
    assert unroll_pays(group, 384.0) and not unroll_pays(group, None)
    # a chain shared by 8 branches of 10: packed 2 + 100 + 80 = 182 tokens, unrolled 8 x 112
    tree = new_tree([1, 2])
    trunk = add_step(tree, tree.root, [5] * 100, [-1.0] * 100, [1.0] * 100)
    for _ in range(8):
        add_step(tree, trunk, [6] * 10, [-1.0] * 10, [1.0] * 10, terminal=True,
                 stop_reason="length", reward=0.0)
    # 182 + 182^2 / 384 = 268 < 8 * (112 + 112^2 / 384) = 1157: keep it packed
    assert not unroll_pays(tree, 384.0)


def test_micro_batch_bounds_keep_short_rows_apart():
    from ibtpo.training.packing import micro_batch_bounds

    # rows of 10, 8, 3, 3, 2 tokens, 16 positions each: 10 alone (2 x 10 > 16); 8 alone (3 would
    # be padded by 5/8 > 1/4); 3, 3 (2 would be padded by 1/3); 2
    assert micro_batch_bounds([10, 8, 3, 3, 2], 16) == [(0, 1), (1, 2), (2, 4), (4, 5)]
    # a budget of 40: 10 and 8 (padded by 2/10), then 3, 3, 2? 2 is padded by 1/3: apart
    assert micro_batch_bounds([10, 8, 3, 3, 2], 40) == [(0, 2), (2, 4), (4, 5)]
    assert micro_batch_bounds([40], 16) == [(0, 1)]  # at least one row
