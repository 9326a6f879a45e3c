"""The built-in Countdown task: verifier on hand-written solutions, path counts worked by hand,
uniform solution draws, solvable problems, disjoint splits, the reward and its default."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from ibtpo.config import ConfigError, TaskConfig, load_config
from ibtpo.data import load_task
from ibtpo.data.countdown import (
    CountdownTask,
    count_paths,
    dead_end_rate,
    make_problem,
    parse_prompt,
    sample_path,
    start_state,
    verify,
)
from ibtpo.data.rewards import task_reward_fn, task_reward_spec

NUMBERS = [2, 3, 4]  # target 24: 4*3*2 in any order of the two multiplications


@pytest.mark.parametrize("completion", [
    "4*3=12\n\n12*2=24\n\nanswer: 24",
    "3*2=6\n\n6*4=24\n\nanswer: 24",
    "3 * 4 = 12\n\n2*12=24\n\nanswer: 24",  # either operand order, spaces
    "4*3=12\n12*2=24\nanswer: 24",  # blank lines between steps are optional
])
def test_valid_solutions_score_one(completion):
    assert verify(completion, NUMBERS, "24") == 1.0


@pytest.mark.parametrize("why, completion", [
    ("reused number", "4-3=1\n\n4*3=12\n\n12*2=24\n\nanswer: 24"),
    ("number used twice in one step", "4*4=16\n\n16+3=19\n\nanswer: 19"),
    ("wrong arithmetic", "4*3=13\n\n13*2=26\n\nanswer: 26"),
    ("inexact division", "3/2=1\n\n4*1=4\n\nanswer: 4"),
    ("subtraction below 0", "3-4=1\n\n1*2=2\n\nanswer: 2"),
    ("unavailable operand", "6*4=24\n\nanswer: 24"),
    ("result used twice", "3*2=6\n\n6+6=12\n\n12*2=24\n\nanswer: 24"),
    ("last step does not make the target", "4*3=12\n\n12+2=14\n\nanswer: 24"),
    ("answer is not the target", "4*3=12\n\n12+2=14\n\nanswer: 14"),
    ("malformed step line", "4*3=12\n\nso 12*2=24\n\nanswer: 24"),
    ("no answer line", "4*3=12\n\n12*2=24"),
    ("text after the answer", "4*3=12\n\n12*2=24\n\nanswer: 24\n\ndone"),
    ("no step", "answer: 24"),
    ("unknown operator", "4x3=12\n\n12*2=24\n\nanswer: 24"),
])
def test_invalid_solutions_score_zero(why, completion):
    assert verify(completion, NUMBERS, "24") == 0.0, why


def test_bad_reference_is_unscorable_and_numbers_may_be_a_string():
    assert verify("4*3=12\n\n12*2=24\n\nanswer: 24", "2 3 4", 24) == 1.0
    assert verify("4*3=12\n\nanswer: 12", NUMBERS, "twelve") is None
    assert verify("4*3=12\n\nanswer: 12", "two three", "12") is None


def test_path_counts_and_dead_ends_worked_by_hand():
    # [2, 3, 4] -> 24: 4*3 then *2, 4*2 then *3, 3*2 then *4. First reference steps (larger
    # operand first, no 0, no x*1 or x/1): 3+2 3-2 3*2 | 4+2 4-2 4*2 4/2 | 4+3 4-3 4*3 = 10,
    # of which 3*2, 4*2 and 4*3 lead to 24: dead-end rate 7/10.
    assert count_paths(start_state(NUMBERS), 24) == 3
    assert dead_end_rate(NUMBERS, 24) == pytest.approx(0.7)
    # [3, 3] -> 6: only 3+3. First steps 3+3, 3*3, 3/3 (3-3 makes 0: excluded); 3*3 = 9 and
    # 3/3 = 1 are dead ends: 2/3.
    assert count_paths(start_state([3, 3]), 6) == 1
    assert dead_end_rate([3, 3], 6) == pytest.approx(2 / 3)
    # A path uses every result it makes: [1, 2, 9] -> 11 is 9+2 only (not 2-1 then 9+2).
    assert count_paths(start_state([1, 2, 9]), 11) == 1


def test_solutions_are_drawn_uniformly_among_the_paths():
    rng = random.Random(0)
    draws = Counter(tuple(sample_path(NUMBERS, 24, rng)) for _ in range(3000))
    assert len(draws) == 3
    assert all(900 <= n <= 1100 for n in draws.values()), draws  # 1000 each; sd ~26


def test_problem_format_and_meta():
    p = make_problem([2, 3, 4], 24, random.Random(0))
    assert p.prompt == "2 3 4 -> 24\n" and parse_prompt(p.prompt) == ([2, 3, 4], 24)
    assert p.answer == "24" and p.n_terms == 3
    assert p.meta == {"numbers": [2, 3, 4], "solutions": 3, "dead_end_rate": pytest.approx(0.7)}
    assert verify(p.solution, p.meta["numbers"], p.answer) == 1.0


def test_every_problem_is_solvable_with_several_paths_and_the_splits_are_disjoint():
    cfg = TaskConfig(name="countdown", eval_size=200, countdown_sizes=[3, 4, 5])
    task = load_task(cfg)
    assert isinstance(task, CountdownTask)
    held = task.eval_set()
    train = task.train_batch(400, random.Random(1))
    assert not {p.prompt for p in held} & {p.prompt for p in train}
    assert len({p.prompt for p in held}) == 200
    for p in held + train:
        numbers, target = parse_prompt(p.prompt)
        assert 10 <= target <= 60 and target not in numbers
        assert max(numbers) <= 10 and len(numbers) in (3, 4, 5)
        assert p.meta["solutions"] >= 2
        assert verify(p.solution, numbers, p.answer) == 1.0
    assert Counter(p.n_terms for p in held).keys() == {3, 4, 5}


def test_task_is_deterministic_given_the_seeds():
    cfg = TaskConfig(name="countdown", eval_size=50)
    a, b = CountdownTask(cfg), CountdownTask(cfg)
    assert a.eval_set() == b.eval_set()
    assert a.train_batch(20, random.Random(3)) == b.train_batch(20, random.Random(3))
    assert CountdownTask(TaskConfig(name="countdown", eval_size=50, seed=1)).eval_set() != \
        a.eval_set()


def test_task_name_alone_picks_the_countdown_verifier():
    cfg = TaskConfig(name="countdown")
    assert task_reward_spec(cfg) == "countdown"
    assert task_reward_spec(TaskConfig()) == "arithmetic"
    reward = task_reward_fn(cfg)
    # The arithmetic verifier would accept this (right final number, invalid steps).
    out = reward(["2 3 4 -> 24\n"] * 2, ["9*9=24\n\nanswer: 24", "4*3=12\n\n12*2=24\n\nanswer: 24"],
                 answer=["24", "24"], numbers=[[2, 3, 4], [2, 3, 4]])
    assert out == [0.0, 1.0]


def test_countdown_reward_without_numbers_names_the_column():
    with pytest.raises(ValueError, match="column 'numbers'"):
        task_reward_fn(TaskConfig(name="countdown"))(["p"], ["answer: 1"], answer=["1"])


def test_bad_countdown_fields_are_config_errors():
    with pytest.raises(ConfigError) as err:
        load_config([], ["task.countdown_sizes=[1, 7]", "task.countdown_targets=[50, 10]"])
    text = str(err.value)
    assert "task.countdown_sizes" in text and "task.countdown_targets" in text


def test_cli_warms_up_trains_and_evaluates_on_countdown(tmp_path, capsys):
    """`task.name=countdown` alone: the warm-up trains on its solutions, RL scores every
    trajectory with the Countdown verifier (its `numbers` column reaches it: no unscorable
    trajectory), and `ibtpo eval` reports per number count."""
    import json

    from ibtpo.cli import main

    task = ["task.name=countdown", "task.eval_size=8", "eval.size=8", "eval.k=2",
            "sampling.max_new_tokens=40", "train.tensorboard=false"]
    sets = lambda values: [a for v in values for a in ("--set", v)]  # noqa: E731
    sft = tmp_path / "sft"
    assert main(["sft", "--no-progress", *sets(task + [
        f"sft.out_dir={sft}", "sft.steps=4", "sft.batch_size=8", "sft.eval_every=0",
        "sft.eval_size=8", "sft.stop_at_accuracy=0"])]) == 0, capsys.readouterr().err
    assert json.loads((sft / "ibtpo.json").read_text())["task"]["name"] == "countdown"
    run = tmp_path / "run"
    assert main(["train", "--config", "grpo", "--no-progress", *sets(task + [
        f"train.init={sft}", f"train.out_dir={run}", "train.steps=2",
        "train.prompts_per_step=2", "train.eval_every=0"])]) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r.get("train/step", 0) > 0]
    assert len(steps) == 2 and all(r["rollout/unscorable"] == 0 for r in steps)
    assert all(0.0 <= r["rollout/reward_mean"] <= 1.0 for r in steps)
    capsys.readouterr()
    assert main(["eval", "--model", str(sft), *sets(task)]) == 0
    assert "pass@1" in capsys.readouterr().out


def test_demo_on_countdown_trains_both_methods_on_it_and_keeps_warm_ups_apart(tmp_path, capsys):
    """`ibtpo demo --task countdown` at tiny settings: a Countdown warm-up, then GRPO and IB-TPO
    on Countdown, 3 seeds each; the arithmetic demo refuses that warm-up (exit 2, naming --out)
    instead of training arithmetic from it."""
    import json

    from ibtpo.cli import main

    tiny = ["task.eval_size=8", "eval.size=4", "eval.k=2", "sampling.max_new_tokens=40",
            "train.prompts_per_step=2", "rollout.b0=2", "rollout.rounds=2",
            "train.token_budget=150", "sft.steps=3", "sft.batch_size=8", "sft.eval_every=0",
            "sft.eval_size=4", "sft.stop_at_accuracy=0"]
    sets = [a for v in tiny for a in ("--set", v)]
    argv = ["demo", "--task", "countdown", "--no-progress", "--out", str(tmp_path), *sets]
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "| grpo | 3 |" in out and "| ibtpo | 3 |" in out
    assert json.loads((tmp_path / "sft" / "ibtpo.json").read_text())["task"]["name"] == "countdown"
    for method in ("grpo", "ibtpo"):
        run = json.loads((tmp_path / method / "seed2" / "checkpoints" / "latest" /
                          "ibtpo.json").read_text())
        assert run["config"]["task"]["name"] == "countdown"
        assert run["config"]["eval"]["k"] == 2  # the user's --set over the demo's eval.k=64
    assert main(["demo", "--no-progress", "--out", str(tmp_path), *sets]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "'countdown'" in err and "Traceback" not in err
