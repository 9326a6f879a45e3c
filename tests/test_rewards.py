"""Reward functions: TRL shape, the three verifiers, the registry."""

from __future__ import annotations

import pytest

from ibtpo.data.rewards import REWARDS, get_reward_fn


def test_registry_names_and_bad_name():
    assert set(REWARDS) == {"arithmetic", "numeric", "math_verify"}
    with pytest.raises(ValueError, match="arithmetic, numeric, math_verify"):
        get_reward_fn("exact")


def test_arithmetic_reward_is_trl_shaped_and_ignores_other_columns():
    f = get_reward_fn("arithmetic")
    completions = ["1+2=3\n\nanswer: 3", "answer: 4", "no answer", "answer: 3"]
    rewards = f(["1+2=?\n"] * 4, completions, answer=["3", "3", "3", "x"], n_terms=[2] * 4)
    assert rewards == [1.0, 0.0, 0.0, None]


def test_conversational_completions_score_the_last_message():
    f = get_reward_fn("arithmetic")
    completion = [{"role": "assistant", "content": "answer: 5"}]
    assert f(["q"], [completion], answer=["5"]) == [1.0]


def test_missing_or_misaligned_answer_column_raises():
    f = get_reward_fn("numeric")
    with pytest.raises(ValueError, match="'answer' has 1 entries for 2"):
        f(["a", "b"], ["1", "2"], answer=["1"])
    with pytest.raises(ValueError, match="'answer' has none"):
        f(["a"], ["1"])


@pytest.mark.parametrize("completion, answer, reward", [
    ("so the total is 1,234.", "1234", 1.0),  # thousands separator
    ("x = -3.50", "-3.5", 1.0),
    ("first 7 then 8", "7", 0.0),             # the last number counts
    ("no number here", "7", 0.0),
    ("7", "seven", None),                     # unparsable reference
])
def test_numeric_reward(completion, answer, reward):
    assert get_reward_fn("numeric")(["q"], [completion], answer=[answer]) == [reward]


@pytest.mark.parametrize("completion, answer, reward", [
    ("the answer is $\\frac{1}{2}$", "1/2", 1.0),
    ("so x = 0.5", "\\frac12", 1.0),          # bare LaTeX reference
    ("the answer is $3$", "4", 0.0),
    ("the answer is $3$", "", None),          # nothing to parse in the reference
])
def test_math_verify_reward(completion, answer, reward):
    pytest.importorskip("math_verify")
    assert get_reward_fn("math_verify")(["q"], [completion], answer=[answer]) == [reward]
