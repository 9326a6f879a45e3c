"""Compare: equal generated-token budgets, the table, the plots, and its input errors."""

import json

import pytest

from ibtpo.cli import main
from ibtpo.compare import markdown_table, run_compare, summarise_run
from ibtpo.config import ConfigError, resolve_config_path

EASY = ["task.terms=[2]", "task.max_operand=9", "task.eval_size=30", "sampling.max_new_tokens=24",
        "eval.size=10", "eval.k=1", "train.tensorboard=false", "train.prompts_per_step=4"]


def test_compare_runs_every_config_to_the_same_token_budget(warm_checkpoint, tmp_path):
    configs = [resolve_config_path("grpo"), resolve_config_path("ibtpo")]
    table = run_compare(configs, overrides=EASY + [f"train.init={warm_checkpoint}"], seeds=1,
                        out_dir=tmp_path, token_budget=1500, progress=False)
    results = json.loads((tmp_path / "compare.json").read_text())
    assert set(results) == {"grpo", "ibtpo"}
    for name, runs in results.items():
        run = runs[0]
        # stops at the first step that reaches the budget: 4 prompts x <= 12 trajectories x <= 24
        # tokens per step bound the overshoot
        assert 1500 <= run["generated_tokens"] < 1500 + 4 * 12 * 24
        assert run["init_pass@1"] == results["grpo"][0]["init_pass@1"]  # same warm start
    assert results["ibtpo"][0]["rollout/trajectories_per_prompt"] == 12
    assert results["grpo"][0]["rollout/trajectories_per_prompt"] == 8
    assert "| grpo | 1 |" in table and "| ibtpo | 1 |" in table
    assert (tmp_path / "compare.png").stat().st_size > 10_000
    assert (tmp_path / "compare.md").read_text().startswith("# Comparison at 1500 generated tokens")


def test_summary_and_table_from_hand_written_rows():
    rows = [{"step": 0, "train/step": 0, "eval/pass@1": 0.5, "eval/avg@k": 0.4},
            {"step": 1, "train/step": 1, "train/generated_tokens": 100, "rollout/eff_rate": 0.5,
             "rollout/reward_mean": 0.25},
            {"step": 2, "train/step": 2, "train/generated_tokens": 220, "rollout/eff_rate": 1.0,
             "rollout/reward_mean": 0.75, "eval/pass@1": 0.7, "eval/avg@k": 0.6}]
    s = summarise_run(rows)
    assert (s["pass@1"], s["init_pass@1"], s["steps"], s["generated_tokens"]) == (0.7, 0.5, 2, 220)
    assert s["rollout/eff_rate"] == 0.75 and s["rollout/reward_mean"] == 0.5
    table = markdown_table({"a": [{**s, "wall_s": 3.0}], "b": [{**s, "wall_s": 1.0},
                                                               {**s, "pass@1": 0.9, "wall_s": 2.0}]})
    assert "| a | 1 | 0.700 | 0.500 |" in table
    assert "| b | 2 | 0.800 ± 0.141 |" in table  # mean of 0.7, 0.9; sample std 0.1414


def test_compare_needs_a_budget_and_one_warm_start(tmp_path):
    with pytest.raises(ConfigError) as err:
        run_compare([resolve_config_path("grpo"), resolve_config_path("ibtpo")],
                    overrides=["train.init=a"], out_dir=tmp_path, seeds=0)
    assert "train.token_budget" in str(err.value) and "--seeds: got 0" in str(err.value)
    other = tmp_path / "other.yaml"
    other.write_text("train: {init: elsewhere, token_budget: 1000}\n")
    assert main(["compare", "grpo", str(other), "--out", str(tmp_path)]) == 2
