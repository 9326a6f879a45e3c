"""`ibtpo score`: IB-Score diagnostics of a policy's trees, no parameter updated."""

import json
import math

import pytest
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
    out = capsys.readouterr().out  # a table, not a JSON dump
    assert not out.lstrip().startswith("{") and "IB-Score diagnostics of" in out
    rows = {cells[0]: cells[1] for line in out.splitlines()
            if len(cells := [c.strip() for c in line.strip("│ ").split("│")]) == 2}
    assert rows["prompts"] == "6" and rows["rollout/trajectories_per_prompt"] == "12.0000"
    after, _ = load_model(str(warm_checkpoint))
    assert all(torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters()))


# --- ibtpo score --rollouts: rollouts of any framework ------------------------------------------
def rollout_rows():
    """2 steps x 2 prompts x 3 completions, with token texts and log-probs. Step 0, prompt a:
    first steps "x\\n\\n" (log-probs -1, -1: pi_bar = e^-1), "y" (-2: e^-2), "z" (-0.5: e^-0.5)
    with rewards 1, 0, 0."""
    rows = []
    for step in (0, 1):
        for pid in ("a", "b"):
            rows += [
                {"step": step, "prompt_id": pid, "completion": "x\n\nw", "reward": 1.0,
                 "tokens": ["x", "\n\n", "w"], "logprobs": [-1.0, -1.0, -3.0]},
                {"step": step, "prompt_id": pid, "completion": "y", "reward": 0.0 if pid == "a"
                 else 1.0, "tokens": ["y"], "logprobs": [-2.0]},
                {"step": step, "prompt_id": pid, "completion": "z", "reward": 0.0,
                 "tokens": ["z"], "logprobs": [-0.5]}]
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_score_rollouts_gives_the_dynamics_table_and_plot(tmp_path, capsys):
    from ibtpo.core.ib_score import ib_diagnostics

    data = write_jsonl(tmp_path / "rollouts.jsonl", rollout_rows())
    out = tmp_path / "dyn" / "score.json"
    assert main(["score", "--rollouts", str(data), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out  # 80 columns (not a terminal): no header cut
    assert "…" not in printed and "ib_score_root" in printed and "tsallis_root" in printed
    table = json.loads(out.read_text())["dynamics"]
    assert [row["step"] for row in table] == [0, 1] and table[0]["prompts"] == 2
    e = math.e
    a = ib_diagnostics([e ** -1, e ** -2, e ** -0.5], [1, 0, 0], 1 / 3, beta=5.0)
    b = ib_diagnostics([e ** -1, e ** -2, e ** -0.5], [1, 1, 0], 2 / 3, beta=5.0)
    for key, name in (("ib", "ib_score_root"), ("cov", "cov_root"), ("tsallis", "tsallis_root")):
        assert table[0][name] == pytest.approx((a[key] + b[key]) / 2)
    assert table[0]["eff_rate"] == 1.0 and table[0]["avg_rate"] == pytest.approx(0.5)
    assert out.with_suffix(".png").stat().st_size > 0


def test_score_rollouts_without_logprobs_needs_a_model(tmp_path, chat_checkpoint):
    from ibtpo.diagnostics import read_rollouts, rollout_dynamics

    rows = [{k: v for k, v in r.items() if k not in ("tokens", "logprobs")} | {"prompt": "1+2=?"}
            for r in rollout_rows()]
    data = write_jsonl(tmp_path / "plain.jsonl", rows)
    assert main(["score", "--rollouts", str(data)]) == 2  # names --model
    with pytest.raises(ValueError, match="--model"):
        rollout_dynamics(read_rollouts(data), load_config())
    table = rollout_dynamics(read_rollouts(data), load_config(), str(chat_checkpoint))
    assert len(table) == 2 and all(math.isfinite(row["ib_score_root"]) for row in table)


def test_bad_rollout_rows_name_the_line(tmp_path):
    from ibtpo.diagnostics import read_rollouts

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt_id": 1, "completion": "x", "reward": 3}])
    with pytest.raises(ValueError, match=r"bad.jsonl:1: reward: got 3"):
        read_rollouts(bad)


def test_dynamics_plot_ticks_only_whole_steps():
    """Two steps (0, 1) used to get ticks at 0.5, 1.5 ...: steps are integers."""
    import matplotlib.pyplot as plt

    from ibtpo.diagnostics import dynamics_figure

    table = [{"step": s, "ib_score_root": -0.1, "cov_root": 0.0, "tsallis_root": 0.5,
              "eff_rate": 1.0} for s in (0, 1)]
    fig = dynamics_figure(table)
    for ax in fig.axes:
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks == [0.0, 1.0], ticks
    plt.close(fig)
