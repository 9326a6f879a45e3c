"""Shortfall: trees with fewer trajectories than B0 + (L-1)·K·Bn say so, and why."""

import logging

from ibtpo.config import load_config, resolve_config_path
from ibtpo.core.tree import add_step, new_tree
from ibtpo.rollout.policy import rollout_params
from ibtpo.training.shortfall import expected_trajectories, shortfall_message, why_short


def _tree(step_lens: list[list[int]]) -> object:
    """A tree with one chain per entry: steps of the given token counts, the last terminal."""
    tree = new_tree([1])
    for chain in step_lens:
        node = tree.root
        for i, n in enumerate(chain):
            last = i == len(chain) - 1
            node = add_step(tree, node, [5] * n, [-0.1] * n, [0.1] * n, terminal=last,
                            stop_reason="eos" if last else None, reward=1.0 if last else None)
    return tree


def test_expected_g_is_b0_plus_rounds_times_k_times_bn():
    assert expected_trajectories(load_config([resolve_config_path("ibtpo")])) == 4 + 8 * 1 * 1
    assert expected_trajectories(load_config([resolve_config_path("grpo")])) == 8  # B0
    cfg = load_config([resolve_config_path("ibtpo")], ["rollout.k=2", "rollout.bn=3"])
    assert expected_trajectories(cfg) == 4 + 8 * 2 * 3


def test_each_reason_a_tree_stops_branching_early():
    cfg = load_config([resolve_config_path("ibtpo")], ["sampling.max_new_tokens=6"])
    params = rollout_params(cfg)
    assert why_short(_tree([[3]] * 4), params) == "steps"  # one-step responses, root excluded
    assert why_short(_tree([[6, 0]] * 4), params) == "room"  # the prefix holds all 6 tokens
    budget = rollout_params(load_config([resolve_config_path("ibtpo")], [
        "sampling.max_new_tokens=6", "rollout.token_budget=24"]))
    assert why_short(_tree([[2, 4]] * 4), budget) == "budget"  # 24 used, a branch needs 4
    assert why_short(_tree([[2, 4]] * 4), params) == "few"


def test_message_names_measured_and_expected_g_and_why():
    cfg = load_config([resolve_config_path("ibtpo")])
    trees = [_tree([[3]] * 4), _tree([[3]] * 4)]
    text = shortfall_message(1, trees, cfg)
    assert text.startswith("step 1: G = 4.0 trajectories per prompt")
    assert "not the 12 = B0 + (L-1)·K·Bn = 4 + 8·1·1" in text
    assert "2 of 2 trees stopped branching early: 2 had no step to branch from" in text
    assert "rollout.branch_from_root=false" in text
    full = _tree([[1, 1]] * 12)
    assert shortfall_message(1, [full], cfg) is None


def test_trainer_warns_once_at_the_first_step_whose_trees_fall_short(warm_checkpoint, tmp_path,
                                                                      caplog):
    """A delimiter the arithmetic answers never contain: every response is one step, so no
    IB-TPO tree has a node below the root to branch from and G = B0 = 4 exactly."""
    from ibtpo.training.trainer import Trainer

    cfg = load_config([resolve_config_path("ibtpo")], [
        "task.terms=[2]", "task.max_operand=9", "task.eval_size=30", "eval.size=4", "eval.k=1",
        "sampling.max_new_tokens=24", "train.tensorboard=false", "train.eval_every=0",
        "train.prompts_per_step=2", "rollout.step_delimiter=#", f"train.init={warm_checkpoint}",
        f"train.out_dir={tmp_path}"])
    trainer = Trainer(cfg, progress=False)
    with caplog.at_level(logging.WARNING, logger="ibtpo"):
        first = trainer.train_step()
        trainer.train_step()
    assert first["rollout/trajectories_per_prompt"] == 4
    warned = [r.getMessage() for r in caplog.records if "trajectories per prompt" in r.getMessage()]
    assert len(warned) == 1, warned
    assert warned[0].startswith("step 1: G = 4.0 trajectories per prompt")
    assert "not the 12 = B0 + (L-1)·K·Bn" in warned[0] and "had no step to branch from" in warned[0]
