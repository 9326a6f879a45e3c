"""Held-out evaluation: pass@1, avg@k, per-terms grouping, unscorable counting, run_eval."""

from __future__ import annotations

import json

import pytest

from ibtpo.config import Config
from ibtpo.data.arithmetic import Problem, make_problem
from ibtpo.data.rewards import RewardSet, RewardTransform
from ibtpo.evaluation import evaluate, pass_at_k, run_eval, sampled_pass_at, solved_counts
from ibtpo.models import save_checkpoint

PROBLEMS = [make_problem([1, 2], ["+"]), make_problem([3, 4, 5], ["+", "-"]),
            make_problem([6, 1], ["-"])]


def constant_reward(value):
    return lambda prompts, completions, answer, **_: [value] * len(completions)


def test_figures_and_grouping_with_a_constant_reward(tiny_model, char_tokenizer):
    result = evaluate(tiny_model, char_tokenizer, PROBLEMS, constant_reward(1.0), k=2,
                      max_new_tokens=4)
    assert result["pass@1"] == 1.0 and result["avg@2"] == 1.0 and result["unscorable"] == 0
    assert {n: g["count"] for n, g in result["by_terms"].items()} == {2: 2, 3: 1}
    assert result["count"] == 3 and 0 < result["mean_tokens"] <= 4


def test_unscorable_rewards_count_as_zero_and_are_counted(tiny_model, char_tokenizer):
    result = evaluate(tiny_model, char_tokenizer, PROBLEMS, constant_reward(None), k=0,
                      max_new_tokens=2)
    assert result["pass@1"] == 0.0 and result["unscorable"] == 3
    assert "avg@0" not in result and "avg@4" not in result  # k = 0: greedy only


def test_reward_fn_receives_prompts_completions_and_columns(tiny_model, char_tokenizer):
    seen = {}

    def spy(prompts, completions, answer, source):
        seen.update(prompts=prompts, completions=completions, answer=answer, source=source)
        return [0.0] * len(completions)

    problems = [Problem("1+1=?\n", "2", meta={"source": "a"}),
                Problem("2+2=?\n", "4", meta={"source": "b"})]
    result = evaluate(tiny_model, char_tokenizer, problems, spy, k=3, max_new_tokens=3)
    assert seen["prompts"] == ["1+1=?\n"] * 3 + ["2+2=?\n"] * 3  # problem-major, k per problem
    assert seen["answer"] == ["2"] * 3 + ["4"] * 3 and seen["source"] == ["a"] * 3 + ["b"] * 3
    assert all(isinstance(c, str) for c in seen["completions"])
    assert result["by_terms"] == {}  # rows without n_terms are not grouped


def test_sampling_is_seeded(tiny_model, char_tokenizer):
    texts = []

    def record(prompts, completions, answer, **_):
        texts.append(completions)
        return [0.0] * len(completions)

    for seed in (5, 5, 6):
        evaluate(tiny_model, char_tokenizer, PROBLEMS, record, k=2, max_new_tokens=8, seed=seed)
    greedy, sampled = texts[0::2], texts[1::2]
    assert greedy[0] == greedy[1] == greedy[2]
    assert sampled[0] == sampled[1] != sampled[2]


def test_empty_problem_list_raises(tiny_model, char_tokenizer):
    with pytest.raises(ValueError, match="at least one problem"):
        evaluate(tiny_model, char_tokenizer, [], constant_reward(1.0))


def test_run_eval_loads_a_checkpoint_prints_and_writes_json(tiny_model, char_tokenizer,
                                                            tmp_path, capsys):
    save_checkpoint(tiny_model, char_tokenizer, tmp_path / "ckpt",
                    extra={"task": {"max_operand": 30}})
    cfg = Config()
    cfg.eval.size, cfg.eval.k, cfg.sampling.max_new_tokens = 6, 1, 4
    result = run_eval(cfg, str(tmp_path / "ckpt"), str(tmp_path / "out" / "eval.json"))
    assert json.loads((tmp_path / "out" / "eval.json").read_text())["count"] == 6
    assert result["mean_tokens"] <= 4 and set(result) >= {"pass@1", "avg@1", "by_terms"}
    out = capsys.readouterr().out
    assert "pass@1" in out and "task.max_operand: checkpoint 30, config 9" in out


def test_pass_at_k_by_hand():
    # n = 4, c = 1: pass@1 = 1/4; pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 1/2; pass@4 = 1
    assert [pass_at_k(4, 1, k) for k in (1, 2, 4)] == pytest.approx([0.25, 0.5, 1.0])
    # n = 16, c = 0 -> 0 for every k; c = 16 -> 1; n - c < k -> 1 (C(n - c, k) = 0)
    assert pass_at_k(16, 0, 16) == 0.0 and pass_at_k(16, 16, 1) == 1.0
    assert pass_at_k(16, 13, 4) == 1.0
    # n = 16, c = 2, k = 8: 1 - C(14,8)/C(16,8) = 1 - 3003/12870 = 0.76667
    assert pass_at_k(16, 2, 8) == pytest.approx(1 - 3003 / 12870)
    with pytest.raises(ValueError, match="0 < k <= n"):
        pass_at_k(4, 1, 8)


def test_sampled_pass_at_averages_problems():
    # problem 1: c = 1 of 4 -> 1/4, 1/2, 1; problem 2: c = 2 of 4 -> 1/2, 1 - 1/6, 1
    # (None counts as unsolved, a reward below 1 too)
    out = sampled_pass_at([1.0, 0.0, None, 0.5, 1.0, 1.0, 0.0, 0.0], 4)
    assert out == pytest.approx({"sampled_pass@1": 0.375, "sampled_pass@2": (0.5 + 5 / 6) / 2,
                                 "sampled_pass@4": 1.0})


def test_solved_counts_by_level():
    # k = 2 per problem; level 1: only 1.0 counts; level 0.75: 0.8 counts too; None never
    rewards = [1.0, 0.8, None, 0.5, 0.75, 0.0]
    assert solved_counts(rewards, 2) == [1, 0, 0]
    assert solved_counts(rewards, 2, 0.75) == [2, 0, 1]


def test_several_functions_all_returning_1_count_as_solved(tiny_model, char_tokenizer):
    # six equal-weight functions returning 1: a float mean gave 0.9999999999999999, so no sample
    # was "solved" (pass@k 0 while pass@1 looked like 1.0); the exact mean gives 1.0
    ones = lambda prompts, completions, **kw: [1.0] * len(completions)  # noqa: E731
    six = RewardSet([(f"f{i}", ones) for i in range(6)])
    result = evaluate(tiny_model, char_tokenizer, PROBLEMS, six, k=4, max_new_tokens=2)
    assert result["pass@1"] == 1.0 and result["avg@4"] == 1.0
    assert result["sampled_pass@1"] == 1.0 and result["sampled_pass@4"] == 1.0
    assert result["solved"] == [4, 4, 4]


def test_rescaled_rewards_are_solved_at_the_threshold(tiny_model, char_tokenizer):
    # raw 0.0 on [-1, 1] -> 0.5 after rescaling; threshold 0.0 -> level 0.5: solved
    def raw(value):
        return RewardSet([("r", lambda prompts, completions, **kw: [value] * len(completions))],
                         transform=RewardTransform("rescale", threshold=0.0, low=-1.0, high=1.0))

    assert evaluate(tiny_model, char_tokenizer, PROBLEMS, raw(0.0), k=2,
                    max_new_tokens=2)["solved"] == [2, 2, 2]
    assert evaluate(tiny_model, char_tokenizer, PROBLEMS, raw(-0.5), k=2,
                    max_new_tokens=2)["solved"] == [0, 0, 0]


def test_evaluation_reports_sampled_pass_at_k_up_to_k(tiny_model, char_tokenizer):
    result = evaluate(tiny_model, char_tokenizer, PROBLEMS, constant_reward(1.0), k=8,
                      max_new_tokens=2)
    assert {k for k in result if k.startswith("sampled_pass@")} == {
        "sampled_pass@1", "sampled_pass@2", "sampled_pass@4", "sampled_pass@8"}
    assert result["sampled_pass@8"] == 1.0
