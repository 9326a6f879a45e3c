"""The built-in arithmetic task: format, determinism, disjoint splits, verifier."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from ibtpo.config import TaskConfig
from ibtpo.data.arithmetic import ArithmeticTask, count_problems, make_problem, verify


def test_problem_format_matches_the_docstring_example():
    p = make_problem([23, 45, 12], ["+", "-"])
    assert p.prompt == "23+45-12=?\n"
    # 23+45 = 68, 68-12 = 56
    assert p.solution == "23+45=68\n\n68-12=56\n\nanswer: 56"
    assert p.answer == "56" and p.n_terms == 3


def test_every_solution_is_correct_and_has_one_step_per_operation():
    task = ArithmeticTask(TaskConfig(eval_size=50))
    for p in task.train_batch(300, random.Random(1)) + task.eval_set():
        expr = p.prompt.removesuffix("=?\n")
        steps = p.solution.split("\n\n")
        assert len(steps) == p.n_terms and steps[-1] == f"answer: {eval(expr)}"
        for step in steps[:-1]:
            left, right = step.split("=")
            assert eval(left) == int(right) >= 0  # non-negative by default
        assert verify(p.solution, p.answer) == 1.0


def test_task_is_deterministic_given_the_seeds():
    a, b = ArithmeticTask(TaskConfig()), ArithmeticTask(TaskConfig())
    assert a.eval_set() == b.eval_set()
    assert a.train_batch(50, random.Random(3)) == b.train_batch(50, random.Random(3))
    other = ArithmeticTask(TaskConfig(seed=1))
    assert other.eval_set() != a.eval_set()


def test_eval_set_has_eval_size_distinct_problems():
    task = ArithmeticTask(TaskConfig(eval_size=120))
    prompts = [p.prompt for p in task.eval_set()]
    assert len(prompts) == 120 == len(set(prompts))


@pytest.mark.parametrize("seed", [0, 7])
def test_train_and_held_out_splits_are_disjoint(seed):
    # A small space (2 terms, operands 1..6, '+': 36 problems) with 12 held out: an overlapping
    # generator would hit a held-out prompt in nearly every batch of 2000 draws.
    cfg = TaskConfig(terms=[2], max_operand=6, ops="+", eval_size=12, seed=seed)
    task = ArithmeticTask(cfg)
    held = {p.prompt for p in task.eval_set()}
    train = {p.prompt for p in task.train_batch(2000, random.Random(seed))}
    assert not held & train
    assert len(held | train) == 36  # everything else is reachable


def test_term_weights_and_operand_range_are_respected():
    cfg = TaskConfig(terms=[2, 4], term_weights=[3.0, 1.0], max_operand=20, eval_size=10)
    batch = ArithmeticTask(cfg).train_batch(4000, random.Random(0))
    counts = Counter(p.n_terms for p in batch)
    assert set(counts) == {2, 4} and 2.6 < counts[2] / counts[4] < 3.4  # expected 3:1
    operands = [int(x) for p in batch for x in p.prompt[:-3].replace("-", "+").split("+")]
    assert min(operands) == 1 and max(operands) == 20


def test_allow_negative_gives_negative_answers_that_verify():
    cfg = TaskConfig(terms=[3], ops="-", allow_negative=True, eval_size=5)
    batch = ArithmeticTask(cfg).train_batch(50, random.Random(0))
    assert any(int(p.answer) < 0 for p in batch)
    assert all(verify(p.solution, p.answer) == 1.0 for p in batch)


def test_count_problems_matches_enumeration():
    # 2 terms <= 9: 81 sums + 45 non-negative differences (a >= b: 9 + 8 + ... + 1)
    assert count_problems(TaskConfig(terms=[2], max_operand=9)) == 126
    # 3 terms, '-' only, operands <= 4, negatives allowed: 4 ** 3 chains
    assert count_problems(TaskConfig(terms=[3], max_operand=4, ops="-", allow_negative=True)) == 64
    # weight 0 excludes the 3-term problems: 3 * 3 sums
    assert count_problems(TaskConfig(terms=[2, 3], term_weights=[1, 0], max_operand=3,
                                     ops="+")) == 9


def test_held_out_set_as_large_as_the_space_raises():
    with pytest.raises(ValueError, match=r"task.eval_size=200, .* only 126 distinct problems"):
        ArithmeticTask(TaskConfig(terms=[2], max_operand=9, eval_size=200))


@pytest.mark.parametrize("completion, reward", [
    ("3+4=7\n\nanswer: 7", 1.0),           # correct
    ("answer: 7  \n", 1.0),                # trailing spaces and newline are fine
    ("3+4=8\n\nanswer: 8", 0.0),           # wrong
    ("3+4=7", 0.0),                        # no answer line
    ("answer: seven", 0.0),                # unparsable answer
    ("answer: 7.0", 0.0),                  # not an integer
    ("answer: 7\n\nanswer: 8", 0.0),       # only the last answer line counts
    ("answer: 8\n\nanswer: 7", 1.0),
    ("", 0.0),
])
def test_verifier(completion, reward):
    assert verify(completion, "7") == reward


@pytest.mark.parametrize("reference", ["", "seven", "7.5", None])
def test_verifier_returns_none_for_a_malformed_reference(reference):
    assert verify("answer: 7", reference) is None
