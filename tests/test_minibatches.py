"""Off-policy updates (`train.mini_batches`): whole trees per mini-batch, one optimizer step each,
old log-probs, reference and advantages from the rollout."""

import pytest
import torch

from ibtpo.core.advantages import AdvParams, get_estimator
from ibtpo.core.losses import AGG_MODES
from ibtpo.training.trainer import Trainer, split_trees
from test_packing import loss_and_grad, make_trainer, random_trees
from test_trainer import rl_config


def test_split_trees_is_contiguous_and_balanced():
    assert split_trees(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_trees(list(range(4)), 1) == [[0, 1, 2, 3]]
    assert split_trees(list(range(4)), 4) == [[0], [1], [2], [3]]


@pytest.mark.parametrize("agg_mode", AGG_MODES)
def test_each_mini_batch_equals_a_hand_split_padded_batch(char_tokenizer, tmp_path, agg_mode):
    """Six hand-built trees (ratios from e^-1 to e^1) in 2 mini-batches of packed trees: each
    mini-batch's loss and gradient equal those of a padded batch of its 3 trees built by hand,
    with the advantages computed over all 6 trees."""
    trees = random_trees(char_tokenizer, seed=4, n_trees=6)
    advantages, _ = get_estimator("ibtpo")(trees, AdvParams())
    packed = make_trainer(tmp_path / "p", agg_mode, "ibtpo", mini_batches=2, pack_tokens=100000)
    plain = make_trainer(tmp_path / "u", agg_mode, "ibtpo", pack_trees="false")
    batches, _ = packed.prepare_batches(trees)
    assert len(batches) == 2
    for batch, group, adv in zip(batches, (trees[:3], trees[3:]), (advantages[:3], advantages[3:])):
        packed.model.zero_grad(set_to_none=True)
        total = 0.0
        for mb, weight in packed.micro_batches(batch):
            loss, _ = packed.micro_step(mb)
            (loss * weight).backward()
            total += float(loss.detach() * weight)
        grad = torch.cat([p.grad.flatten() for p in packed.model.parameters()])
        loss_u, grad_u, _, _ = loss_and_grad(plain, group, adv)
        assert abs(total - loss_u) < 1e-5, (total, loss_u)
        torch.testing.assert_close(grad, grad_u, atol=1e-5, rtol=1e-4)
        assert grad_u.abs().max() > 1e-3


def grpo_trainer(init, out, *extra, name="grpo"):
    return Trainer(rl_config(init, out, "train.prompts_per_step=8", "train.warmup_steps=0",
                             *extra, name=name), progress=False)


def test_the_ratio_leaves_one_from_the_second_mini_batch(warm_checkpoint, tmp_path):
    """Four mini-batches of one rollout: the first step is on-policy (ratio spread ~1e-7 in fp32,
    sampler against training forward), the later ones see the weights the earlier ones moved."""
    trainer = grpo_trainer(warm_checkpoint, tmp_path, "train.mini_batches=4", "train.lr=1e-3")
    trees, _ = trainer.rollout(trainer.task.train_batch(8, trainer.problem_rng))
    batches, _ = trainer.prepare_batches(trees)
    per_step = []
    trainer.model.train()
    for batch in batches:
        metrics: list[dict] = []
        assert not trainer.optimizer_step(batch, metrics)
        per_step.append(float(torch.stack([m["loss/ratio_std"] for m in metrics]).max()))
    assert len(per_step) == 4
    assert per_step[0] < 1e-5 and min(per_step[1:]) > 1e-4, per_step


def test_clip_higher_trains_as_grpo_on_policy_and_differently_off_policy(warm_checkpoint,
                                                                         tmp_path):
    """Same seed, 2 rollout steps at lr 3e-3: with one update per rollout clip-higher's
    parameters equal GRPO's bit for bit (no ratio reaches a clip bound); with 4 mini-batches
    GRPO clips ratios above 1.2 and clip-higher (bound 1.28) ends elsewhere."""
    params = {}
    for n in (1, 4):
        for name in ("grpo", "grpo_clip_higher"):
            trainer = grpo_trainer(warm_checkpoint, tmp_path / f"{name}{n}", "train.steps=2",
                                   "train.lr=3e-3", f"train.mini_batches={n}", name=name)
            last = trainer.train()
            params[name, n] = [p.detach().clone() for p in trainer.model.parameters()]
            if name == "grpo":
                params["clip", n] = last["loss/clipfrac_high"]
    assert all(torch.equal(a, b) for a, b in zip(params["grpo", 1], params["grpo_clip_higher", 1]))
    assert params["clip", 4] > 0
    assert not all(torch.equal(a, b)
                   for a, b in zip(params["grpo", 4], params["grpo_clip_higher", 4]))


def test_too_few_prompts_for_the_mini_batches_is_a_clear_error(warm_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="at least one prompt per process and mini-batch"):
        Trainer(rl_config(warm_checkpoint, tmp_path, "train.prompts_per_step=3",
                          "train.mini_batches=4"), progress=False)
