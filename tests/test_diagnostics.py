"""`ibtpo score`: IB-Score diagnostics of a policy's trees, no parameter updated."""

import json

import torch

from ibtpo.cli import main
from ibtpo.config import load_config
from ibtpo.diagnostics import run_score
from ibtpo.models import load_model

EASY = ["task.terms=[2]", "task.max_operand=9", "task.eval_size=30", "sampling.max_new_tokens=24",
        "eval.size=6", "train.prompts_per_step=4"]


def test_score_grows_ib_trees_on_held_out_prompts(warm_checkpoint, tmp_path):
    out = tmp_path / "score.json"
    result = run_score(load_config(overrides=EASY), str(warm_checkpoint), str(out), progress=False)
    assert result["prompts"] == 6  # eval.size prompts, in chunks of 4 and 2
    assert result["rollout/trajectories_per_prompt"] == 12  # (4, 9, 1, 1)
    assert result["generated_tokens"] == round(6 * result["rollout/generated_tokens_per_prompt"])
    # each term pi_bar * (r - 1 - 1/beta) >= 1 * (0 - 1.2): the mean is at least -1.2
    assert -1.2 <= result["tree/ib_score"] < 0.5
    assert 0.0 <= result["tree/tsallis"] <= 1.0
    assert json.loads(out.read_text()) == result


def test_score_leaves_the_checkpoint_unchanged(warm_checkpoint, capsys):
    before, _ = load_model(str(warm_checkpoint))
    args = ["score", "--model", str(warm_checkpoint), "--no-progress"]
    for item in EASY:
        args += ["--set", item]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["prompts"] == 6
    after, _ = load_model(str(warm_checkpoint))
    assert all(torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters()))
