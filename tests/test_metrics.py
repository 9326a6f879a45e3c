"""Tests for ibtpo.metrics: tree metrics by hand, histograms, logger, METRIC_DOCS coverage."""

import json
import math

import pytest
import torch

from ibtpo.core.advantages import AdvParams, get_estimator
from ibtpo.core.losses import policy_loss
from ibtpo.core.tree import add_step, new_tree
from ibtpo.metrics import (
    METRIC_DOCS,
    MetricsLogger,
    read_metrics,
    to_jsonable,
    tree_histograms,
    tree_metrics,
)

L = math.log


def hand_trees():
    """T1: root -> A (2 tok, pi .5) -> {L1 (pi .25, R 1), L2 (pi .5, R 0)}; root -> L3 (pi .8, R 1)
    -> 5 tokens, IB root 0.0075 (tsallis .35, cov .05625), IB A -0.2 (tsallis .625, cov -.125).
    T2: root -> L1 (pi .5, R 0), root -> L2 (pi .25, R None): 2 tokens; r := 1 (p_hat = 0) ->
    IB = -(0.5 + 0.25)/2/5 = -0.075, tsallis .625, cov 0."""
    t1 = new_tree([0])
    a = add_step(t1, t1.root, [1, 2], [L(0.5)] * 2, [0, 0])
    add_step(t1, a, [3], [L(0.25)], [0], terminal=True, reward=1.0)
    add_step(t1, a, [4], [L(0.5)], [0], terminal=True, reward=0.0)
    add_step(t1, t1.root, [5], [L(0.8)], [0], terminal=True, reward=1.0)
    t2 = new_tree([0])
    add_step(t2, t2.root, [1], [L(0.5)], [0], terminal=True, reward=0.0)
    add_step(t2, t2.root, [2], [L(0.25)], [0], terminal=True, reward=None)
    return [t1, t2]


def chain_tree():
    """root -> C (pi .9) -> L (pi .6, R 1): no node has 2 children (cov 0 by construction)."""
    t = new_tree([0])
    c = add_step(t, t.root, [1], [L(0.9)], [0])
    add_step(t, c, [2], [L(0.6)], [0], terminal=True, reward=1.0)
    return t


def test_tree_metrics_hand():
    m = tree_metrics(hand_trees(), beta=5.0)
    assert m["rollout/prompts"] == 2.0
    assert m["rollout/reward_mean"] == pytest.approx(0.4)            # (1+0+1+0+0)/5
    assert m["rollout/eff_rate"] == pytest.approx(0.5)               # T1 mixed, T2 all 0
    assert m["rollout/trajectories_per_prompt"] == pytest.approx(2.5)
    assert m["rollout/generated_tokens_per_prompt"] == pytest.approx(3.5)   # (5 + 2)/2
    assert m["rollout/trajectories_per_1k_tokens"] == pytest.approx(5000 / 7)
    assert m["rollout/response_len_mean"] == pytest.approx(9 / 5)    # 3, 3, 1, 1, 1
    # branch points (>= 2 children): T1 root 0.0075, T1 A -0.2, T2 root -0.075
    assert m["tree/branch_points"] == pytest.approx(1.5)
    assert m["tree/ib_score"] == pytest.approx((0.0075 - 0.2 - 0.075) / 3)
    assert m["tree/ib_score_root"] == pytest.approx((0.0075 - 0.075) / 2)
    assert m["tree/tsallis"] == pytest.approx((0.35 + 0.625 + 0.625) / 3)
    assert m["tree/tsallis_root"] == pytest.approx((0.35 + 0.625) / 2)
    assert m["tree/cov"] == pytest.approx((0.05625 - 0.125 + 0.0) / 3)
    assert m["tree/cov_root"] == pytest.approx((0.05625 + 0.0) / 2)
    assert m["tree/depth_mean"] == pytest.approx(1.4) and m["tree/depth_max"] == 2.0  # 2,2,1,1,1
    assert m["tree/nodes_per_tree"] == pytest.approx(3.0)           # (4 + 2)/2
    assert m["tree/branching_mean"] == pytest.approx(2.0)
    assert all(isinstance(v, float) for v in m.values())
    json.dumps(m)


def test_ib_means_skip_one_child_chain_nodes():
    with_chain = tree_metrics(hand_trees() + [chain_tree()], beta=5.0)
    without = tree_metrics(hand_trees(), beta=5.0)
    for key in ("tree/ib_score", "tree/cov", "tree/tsallis", "tree/ib_score_root", "tree/cov_root"):
        assert with_chain[key] == pytest.approx(without[key]), key
    alone = tree_metrics([chain_tree()], beta=5.0)  # nothing to average: NaN, logged as null
    assert math.isnan(alone["tree/ib_score"]) and math.isnan(alone["tree/cov_root"])
    assert alone["tree/branch_points"] == 0.0


def test_branch_metrics_hand():
    t1, t2 = hand_trees()
    a = t1.root.children[0]
    t1.branch_points += [a, t1.root]  # a branch from A (depth 1, 2 prefix tokens), one from root
    m = tree_metrics([t1, t2], beta=5.0)
    assert m["rollout/branch_root_share"] == pytest.approx(0.5)
    assert m["rollout/branch_depth_mean"] == pytest.approx(0.5)        # (1 + 0) / 2
    assert m["rollout/branch_prefix_tokens_mean"] == pytest.approx(1.0)  # (2 + 0) / 2
    assert math.isnan(tree_metrics([t2], beta=5.0)["rollout/branch_root_share"])


def test_histograms_hand():
    h = tree_histograms(hand_trees())
    assert h == {"tree/depth_hist": {1: 3, 2: 2}, "tree/branching_hist": {2: 3}}


def test_bad_trees():
    with pytest.raises(ValueError, match="trees"):
        tree_metrics([], beta=5.0)
    with pytest.raises(ValueError, match="tree"):
        tree_metrics([new_tree([1])], beta=5.0)
    with pytest.raises(ValueError, match="beta"):
        tree_metrics(hand_trees(), beta=0.0)


def test_every_emitted_name_is_documented():
    trees = hand_trees()
    names = set(tree_metrics(trees, 5.0)) | set(tree_histograms(trees))
    for est in ("grpo", "ibtpo"):
        names |= set(get_estimator(est)(trees, AdvParams())[1])
    z = torch.zeros(1, 2)
    names |= set(policy_loss(z, z, z, torch.ones(1, 2))[1])
    lead = {"loss/total", "train/grad_norm", "train/lr", "train/step", "train/generated_tokens",
            "time/rollout_s", "time/train_s", "time/step_s", "eval/pass@1", "eval/avg@k",
            "policy/entropy", "rollout/unscorable"}
    missing = (names | lead) - set(METRIC_DOCS)
    assert not missing
    assert all(isinstance(v, str) and v for v in METRIC_DOCS.values())


def test_to_jsonable():
    assert to_jsonable({"a": torch.tensor(1.5), "b": float("nan"), "h": {1: 2}}) == \
        {"a": 1.5, "b": None, "h": {"1": 2}}
    with pytest.raises(ValueError, match="metrics"):
        to_jsonable([1, 2])


@pytest.mark.parametrize("tb", [False, True])
def test_logger_writes_jsonl(tmp_path, tb):
    with MetricsLogger(str(tmp_path), tensorboard=tb) as log:
        log.log(1, {"loss/pg": torch.tensor(0.5), "tree/depth_hist": {1: 3}})
        log.log(2, {"loss/pg": 0.25})
    rows = read_metrics(str(tmp_path))
    assert rows == [{"step": 1, "loss/pg": 0.5, "tree/depth_hist": {"1": 3}},
                    {"step": 2, "loss/pg": 0.25}]
    if tb:
        assert any((tmp_path / "tb").iterdir())


def test_metric_docs_markdown_and_the_docs_page_agree():
    from pathlib import Path

    from ibtpo.metrics import metric_docs_markdown, metrics_page
    md = metric_docs_markdown().splitlines()
    assert md[0] == "| metric | meaning |" and len(md) == len(METRIC_DOCS) + 2
    assert md[2].startswith("| `rollout/") and md[-1].startswith("| `sft/")  # grouped
    page = Path(__file__).resolve().parents[1] / "docs" / "METRICS.md"
    assert page.read_text() == metrics_page(), "docs/METRICS.md is out of date"


def test_clipped_ratio_counts_responses_cut_at_the_length_limit():
    # T1's three leaves: one stopped at the limit; T2's two: one; hand_trees' leaves carry no
    # stop reason (None: not cut) -> 2 of 5 trajectories cut
    trees = hand_trees()
    trees[0].leaves()[0].stop_reason = "length"
    trees[0].leaves()[1].stop_reason = "eos"
    trees[1].leaves()[1].stop_reason = "length"
    assert tree_metrics(trees, beta=5.0)["rollout/clipped_ratio"] == 2 / 5
    assert tree_metrics(hand_trees(), beta=5.0)["rollout/clipped_ratio"] == 0.0


class _FakeWandb:
    """Stands in for the `wandb` module: records init arguments, logged rows and finish."""

    def __init__(self):
        self.inits, self.rows, self.finished = [], [], 0
        self.util = type("util", (), {"generate_id": staticmethod(lambda: "abc123")})

    def init(self, **kw):
        self.inits.append(kw)
        return self

    def log(self, row, step):
        self.rows.append((step, row))

    def finish(self):
        self.finished += 1


def test_wandb_gets_the_numeric_scalars_offline_and_resumes_the_same_run(tmp_path, monkeypatch):
    import sys

    from ibtpo.metrics import open_wandb

    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    for step in (1, 2):  # a run, then its resume in the same out_dir
        run = open_wandb(str(tmp_path), "proj", config={"train": {"lr": 1e-6}}, resume=step > 1)
        with MetricsLogger(str(tmp_path), tensorboard=False, wandb=run) as log:
            log.log(step, {"loss/pg": 0.5, "flag": True, "name": "x", "nan": float("nan")})
    assert [k["id"] for k in fake.inits] == ["abc123", "abc123"]  # the resumed run continues it
    assert fake.inits[0]["mode"] == "offline" and fake.inits[0]["resume"] == "allow"
    assert fake.inits[0]["dir"] == str(tmp_path) and fake.inits[0]["project"] == "proj"
    assert fake.rows == [(1, {"loss/pg": 0.5}), (2, {"loss/pg": 0.5})] and fake.finished == 2
    fake.util.generate_id = staticmethod(lambda: "new456")
    open_wandb(str(tmp_path), "proj")  # a fresh run in the same out_dir: a new W&B run
    assert fake.inits[-1]["id"] == "new456"


def test_wandb_missing_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    from ibtpo.metrics import open_wandb

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(ImportError, match="pip install wandb"):
        open_wandb(str(tmp_path), "proj")
