"""Reward functions: TRL shape, the verifiers, the registry, user functions, weighted sets."""

from __future__ import annotations

import sys
import threading

import pytest

from ibtpo.data.rewards import (
    REWARDS,
    RewardRangeError,
    RewardSet,
    RewardTransform,
    get_reward_fn,
    load_reward_fn,
    reward_set_of,
    weighted_mean,
)
from ibtpo.training.faults import GuardedReward


def test_registry_names_and_bad_name():
    assert set(REWARDS) == {"arithmetic", "countdown", "numeric", "gsm8k", "math_verify",
                            "reasoning_gym"}
    with pytest.raises(ValueError, match="arithmetic, countdown, numeric, gsm8k, math_verify, "
                                         "reasoning_gym"):
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


MATH_TABLE = [  # (completion, reference, reward)
    ("the answer is $\\frac{1}{2}$", "1/2", 1.0),
    ("so x = 0.5", "\\frac12", 1.0),          # bare LaTeX reference
    ("Hence $\\boxed{\\dfrac{3}{4}}$.", "0.75", 1.0),
    ("We get $\\boxed{2\\sqrt{2}}$", "\\sqrt{8}", 1.0),
    ("The result is $x = 3$, i.e. \\boxed{3}", "$3$", 1.0),
    ("so $\\boxed{(1, 2)}$", "(1,2)", 1.0),
    ("the answer is $3$", "4", 0.0),
    ("Hence $\\boxed{\\frac{3}{5}}$.", "0.75", 0.0),
    ("We get $\\boxed{2\\sqrt{3}}$", "\\sqrt{8}", 0.0),
    ("no answer at all", "7", 0.0),
    ("the answer is $3$", "", None),          # nothing to parse in the reference
]


@pytest.mark.parametrize("completion, answer, reward", MATH_TABLE)
def test_math_verify_reward(completion, answer, reward):
    pytest.importorskip("math_verify")
    assert get_reward_fn("math_verify")(["q"], [completion], answer=[answer]) == [reward]


def test_math_verify_works_outside_the_main_thread():
    """math-verify's timeouts use SIGALRM, which raises outside the main thread."""
    pytest.importorskip("math_verify")
    completions, answers, want = zip(*MATH_TABLE)
    out = {}
    worker = threading.Thread(target=lambda: out.setdefault("r", get_reward_fn("math_verify")(
        ["q"] * len(answers), list(completions), answer=list(answers))))
    worker.start()
    worker.join()
    assert out["r"] == list(want)


@pytest.mark.parametrize("completion, answer, reward", [
    ("48/2 = 24 clips in May.\n#### 72", "Natalia sold 48/2 = 24 clips in May.\n#### 72", 1.0),
    ("So she earned $1,250.00 in total.", "#### 1250", 1.0),   # no '####': the last number
    ("#### 72\nthen I add 3 to get 75", "72", 1.0),              # the '####' answer counts
    ("the total is 71", "#### 72", 0.0),
    ("I don't know", "#### 72", 0.0),
    ("#### 72", "#### seventy-two", None),                      # unusable reference
])
def test_gsm8k_reward(completion, answer, reward):
    assert get_reward_fn("gsm8k")(["q"], [completion], answer=[answer]) == [reward]


def test_user_reward_from_module_or_file(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def shorter(prompts, completions, **kw):\n"
        "    return [1.0 if len(c) < 5 else 0.0 for c in completions]\n")
    monkeypatch.chdir(tmp_path)  # a module in the current directory imports by name
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)
    by_module = load_reward_fn("my_rewards:shorter")
    by_file = load_reward_fn(f"{tmp_path / 'my_rewards.py'}:shorter")
    for fn in (by_module, by_file):
        assert fn(prompts=["a", "b"], completions=["ok", "far too long"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="has no function 'longer'"):
        load_reward_fn("my_rewards:longer")
    with pytest.raises(ValueError, match="cannot import 'no_such_module'"):
        load_reward_fn("no_such_module:f")


def test_weighted_rewards_and_none_counts():
    def fmt(prompts, completions, **kw):  # 1 when the completion has an answer line
        return [1.0 if "answer:" in c else 0.0 for c in completions]

    def picky(prompts, completions, **kw):  # cannot score the second item
        return [1.0, None, None]

    def silent(prompts, completions, **kw):
        return [None, None, None]

    rewards = RewardSet([("fmt", fmt), ("picky", picky), ("silent", silent)], [3.0, 1.0, 0.0])
    got = rewards(prompts=["q"] * 3, completions=["answer: 1", "answer: 2", "2"])
    # weights normalised to 0.75 / 0.25 / 0: item 0 = 0.75*1 + 0.25*1 = 1.0; item 1 = 0.75*1 +
    # 0.25*0 (None counts 0) = 0.75; item 2 = 0.75*0 + 0.25*0 = 0.0
    assert got == [1.0, 0.75, 0.0]
    assert rewards.pop_metrics() == {"reward/fmt": 2 / 3, "reward/fmt/none": 0.0,
                                     "reward/picky": 1.0, "reward/picky/none": 2.0,
                                     "reward/silent": 0.0, "reward/silent/none": 3.0}
    assert rewards.pop_metrics()["reward/picky/none"] == 0.0  # reset after popping
    only_none = RewardSet([("picky", picky), ("silent", silent)])
    assert only_none(prompts=["q"] * 3, completions=["a"] * 3) == [1.0 * 0.5, None, None]
    assert load_reward_fn("numeric,gsm8k", [1.0, 1.0])(
        prompts=["q"], completions=["it is 5"], answer=["#### 5"]) == [0.5]  # numeric: None


def test_weighted_mean_is_exactly_in_0_1():
    ones = lambda prompts, completions, **kw: [1.0] * len(completions)  # noqa: E731
    zeros = lambda prompts, completions, **kw: [0.0] * len(completions)  # noqa: E731
    # a float mean of six 1/6-weighted ones is 0.9999999999999999, of 0.6 + 0.3 + 0.1 it is
    # 1.0000000000000002 (out of [0, 1]); fsum(w * r) / fsum(w) gives exactly 1.0 for both
    six = RewardSet([(f"f{i}", ones) for i in range(6)])
    assert six(prompts=["q"] * 2, completions=["c"] * 2) == [1.0, 1.0]
    three = RewardSet([("a", ones), ("b", ones), ("c", ones)], [0.6, 0.3, 0.1])
    assert three(prompts=["q"], completions=["c"]) == [1.0]
    assert RewardSet([("a", zeros), ("b", zeros)], [0.6, 0.4])(
        prompts=["q"], completions=["c"]) == [0.0]
    # mixed: (0.6 * 1 + 0.3 * 0 + 0.1 * 1) / 1.0 = 0.7, within one rounding of the exact value
    mixed = weighted_mean([0.6, 0.3, 0.1], [1.0, 0.0, 1.0])
    assert 0.0 <= mixed <= 1.0 and mixed == pytest.approx(0.7, abs=1e-15)
    assert weighted_mean([1e-300, 1.0, 3.0], [1.0, 1.0, 1.0]) == 1.0
    assert weighted_mean([0.1] * 10, [None] + [1.0] * 9) == pytest.approx(0.9, abs=1e-15)


def test_success_level_is_1_unless_rescaled():
    assert RewardTransform().success_level == 1.0
    assert RewardTransform("threshold", threshold=3.0).success_level == 1.0
    # rescale [-1, 1], threshold 0.5 on the function's scale -> (0.5 + 1) / 2 = 0.75
    assert RewardTransform("rescale", threshold=0.5, low=-1.0, high=1.0).success_level == 0.75
    assert RewardTransform("rescale", threshold=5.0, low=0.0, high=1.0).success_level == 1.0


def trl_format(prompts, completions, **kw):  # TRL-style: -1 for a bad format, else 1
    return [1.0 if "answer:" in c else -1.0 for c in completions]


def test_a_reward_outside_0_1_names_the_function_and_the_value():
    rewards = reward_set_of(trl_format)
    with pytest.raises(RewardRangeError, match=r"reward 'trl_format' returned -1.0 for "
                                               r"completion 'no answer'.*\[0, 1\]"):
        rewards(prompts=["q", "q"], completions=["answer: 1", "no answer"])
    both = reward_set_of([get_reward_fn("numeric"), trl_format])  # the mean could hide it
    with pytest.raises(RewardRangeError, match="trl_format"):
        both(prompts=["q"], completions=["7"], answer=["7"])
    for bad in (float("nan"), float("inf"), "high"):
        with pytest.raises(RewardRangeError, match="expected a (finite )?float"):
            reward_set_of(lambda prompts, completions, **kw: [bad])(prompts=["q"],
                                                                    completions=["c"])


def test_an_out_of_range_reward_stops_even_a_guarded_run():
    # a raising reward function is retried item by item and scored None: a reward out of range
    # is a defect of the function, so it goes through
    for on_error in ("unscorable", "stop"):
        guarded = GuardedReward(reward_set_of(trl_format), on_error, "trl_format")
        with pytest.raises(RewardRangeError):
            guarded(["q"], ["no answer"])


def test_threshold_and_rescale_map_other_scales_into_0_1():
    completions = ["answer: 1", "no answer"]
    threshold = reward_set_of(trl_format, transform=RewardTransform("threshold", threshold=0.0))
    assert threshold(prompts=["q"] * 2, completions=completions) == [1.0, 0.0]
    rescale = reward_set_of(trl_format, transform=RewardTransform("rescale", low=-1.0, high=1.0))
    assert rescale(prompts=["q"] * 2, completions=completions) == [1.0, 0.0]
    # the transform applies to the weighted mean: (1 + -1) / 2 = 0 -> (0 - -1) / 2 = 0.5
    mixed = reward_set_of([trl_format, lambda prompts, completions, **kw: [1.0] * 2],
                          transform=RewardTransform("rescale", low=-1.0, high=1.0))
    assert mixed(prompts=["q"] * 2, completions=completions) == [1.0, 0.5]
    narrow = reward_set_of(trl_format, transform=RewardTransform("rescale", low=0.0, high=1.0))
    with pytest.raises(RewardRangeError, match=r"task.reward_range = \[0.0, 1.0\]"):
        narrow(prompts=["q"], completions=["no answer"])
    with pytest.raises(ValueError, match="low < high"):
        RewardTransform("rescale", low=1.0, high=1.0)


def test_the_default_passes_rewards_through_unchanged():
    values = [0.0, 1.0, 0.25, None, 1]
    same = reward_set_of(lambda prompts, completions, **kw: values)
    got = same(prompts=["q"] * 5, completions=["c"] * 5)
    assert got == [0.0, 1.0, 0.25, None, 1.0]
    assert all(type(r) is float for r in got if r is not None)
