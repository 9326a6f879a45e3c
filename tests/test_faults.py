"""Faults: non-finite steps are skipped (and stop the run when they repeat), raising reward
functions are reported, SIGTERM / SIGINT write a final checkpoint and exit cleanly."""

import copy
import logging
import multiprocessing
import os
import signal
import sys
import time

import pytest
import torch

from ibtpo.cli import main
from ibtpo.config import load_config, resolve_config_path
from ibtpo.metrics import read_metrics
from ibtpo.training import checkpoint as ckpt
from ibtpo.training.faults import GuardedReward, TrainingError
from ibtpo.training.trainer import Trainer

SMALL = ["task.terms=[2]", "task.max_operand=9", "task.eval_size=30", "eval.size=2", "eval.k=1",
         "sampling.max_new_tokens=12", "train.tensorboard=false", "train.eval_every=0",
         "train.prompts_per_step=2", "train.lr=1e-3"]


def make_trainer(init, out, *extra):
    cfg = load_config([resolve_config_path("grpo")],
                      SMALL + [f"train.init={init}", f"train.out_dir={out}", *extra])
    return Trainer(cfg, progress=False)


def snapshot(trainer):
    return ([p.detach().clone() for p in trainer.model.parameters()],
            copy.deepcopy(trainer.optimizer.state_dict()), trainer.scheduler.state_dict())


def same_state(a, b) -> bool:
    params_a, opt_a, sched_a = a
    params_b, opt_b, sched_b = b
    opt_equal = all(torch.equal(opt_a["state"][i][k], opt_b["state"][i][k])
                    for i in opt_a["state"] for k in opt_a["state"][i])
    return (all(torch.equal(x, y) for x, y in zip(params_a, params_b)) and opt_equal
            and sched_a == sched_b)


def nan_loss(trainer):
    step = trainer.micro_step
    return lambda mb: (lambda loss, m: (loss * float("nan"), m))(*step(mb))


def test_nan_loss_and_inf_gradient_skip_the_step(warm_checkpoint, tmp_path, monkeypatch):
    trainer = make_trainer(warm_checkpoint, tmp_path)
    assert trainer.train_step()["train/skipped"] == 0.0  # a normal step: Adam state exists
    before = snapshot(trainer)
    monkeypatch.setattr(trainer, "micro_step", nan_loss(trainer))
    metrics = trainer.train_step()
    assert metrics["train/skipped"] == 1.0 and same_state(before, snapshot(trainer))
    monkeypatch.undo()
    weight = next(trainer.model.parameters())
    hook = weight.register_hook(lambda g: g * float("inf"))  # finite loss, infinite gradient
    metrics = trainer.train_step()
    assert metrics["train/skipped"] == 1.0 and same_state(before, snapshot(trainer))
    assert trainer.step == 3 and trainer.scheduler.last_epoch == 1  # only step 1 moved the LR
    hook.remove()
    assert trainer.train_step()["train/skipped"] == 0.0
    assert not same_state(before, snapshot(trainer))


_ORIGINAL_MICRO_STEP = Trainer.micro_step


def _nan_step(self, mb):
    loss, m = _ORIGINAL_MICRO_STEP(self, mb)
    return loss * float("nan"), m


def test_nonfinite_steps_in_a_row_stop_the_run(warm_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Trainer, "micro_step", _nan_step)
    args = ["train", "--config", "grpo", "--no-progress"] + [
        x for s in SMALL + [f"train.init={warm_checkpoint}", f"train.out_dir={tmp_path}",
                            "train.steps=6", "train.max_nonfinite_steps=2"] for x in ("--set", s)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "non-finite loss or gradient" in err and "2 in a row" in err and "Traceback" not in err
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2] and rows[2]["train/skipped"] == 1.0


# --- reward functions that raise -----------------------------------------------------------------
def fails_on_sevens(prompts, completions, answer=None, **_):
    if any("7" in p for p in prompts):
        raise ZeroDivisionError("bad row")
    return [1.0 for _ in completions]


def test_guarded_reward_scores_the_rest_and_names_the_failing_prompt(caplog):
    guarded = GuardedReward(fails_on_sevens, "unscorable", "custom")
    with caplog.at_level(logging.WARNING, logger="ibtpo"):
        rewards = guarded(["1+2=?\n", "7+1=?\n", "3+3=?\n"], ["a", "b", "c"],
                          answer=["3", "8", "6"])
    assert rewards == [1.0, None, 1.0] and guarded.take_errors() == 1 and guarded.errors == 0
    assert "7+1=?" in caplog.text and "ZeroDivisionError: bad row" in caplog.text
    stopping = GuardedReward(fails_on_sevens, "stop", "custom")
    with pytest.raises(TrainingError, match=r"'7\+1=\?\\n'.*task.reward_errors=stop"):
        stopping(["1+2=?\n", "7+1=?\n"], ["a", "b"], answer=["3", "8"])


def test_a_function_that_never_scored_and_raises_on_everything_stops_at_once():
    # openr1's accuracy_reward(completions, solution, **kw) without a solution column: TypeError
    # on every call; it used to score everything None and the run exited 0
    def accuracy_reward(completions, solution, **kw):
        return [1.0 for _ in completions]

    def reads_level(completions, **kw):
        return [float(level > 1) for level in kw["level"]]

    for on_error in ("unscorable", "stop"):
        guarded = GuardedReward(accuracy_reward, on_error, "openr1.py:accuracy_reward")
        with pytest.raises(TrainingError, match=r"(?s)'openr1.py:accuracy_reward' raised "
                           r"TypeError.*missing 1 required positional argument: 'solution'.*"
                           r"on every completion.*Traceback \(most recent call last\)"):
            guarded(["1+2=?\n", "3+3=?\n"], ["a", "b"], answer=["3", "6"])
        guarded = GuardedReward(reads_level, on_error, "levels")
        with pytest.raises(TrainingError, match=r"(?s)'levels' raised KeyError: 'level'.*"
                           r"Traceback.*in reads_level\n.*kw\[\"level\"\]"):
            guarded(["1+2=?\n"], ["a"], answer=["3"])
    # once it has scored, a call that fails on everything is a bad batch: unscorable, counted
    guarded = GuardedReward(fails_on_sevens, "unscorable", "custom")
    assert guarded(["1+2=?\n"], ["a"], answer=["3"]) == [1.0]
    assert guarded(["7+1=?\n", "7+2=?\n"], ["a", "b"], answer=["8", "9"]) == [None, None]
    assert guarded.take_errors() == 2


def test_the_cli_exits_1_when_the_reward_never_scores(warm_checkpoint, tmp_path, capsys):
    (tmp_path / "openr1.py").write_text(
        "def accuracy_reward(completions, solution, **kw):\n    return [1.0] * len(completions)\n")
    args = ["train", "--config", "grpo", "--no-progress"] + [
        x for s in SMALL + [f"train.init={warm_checkpoint}", f"train.out_dir={tmp_path / 'run'}",
                            f"task.reward={tmp_path / 'openr1.py'}:accuracy_reward"]
        for x in ("--set", s)]
    assert main(args) == 1  # it exited 0 ("done") having scored every completion None
    err = capsys.readouterr().err
    assert "raised TypeError" in err and "'solution'" in err and "on every completion" in err


def test_steps_where_every_reward_is_none_warn_then_stop(warm_checkpoint, tmp_path, caplog):
    trainer = make_trainer(warm_checkpoint, tmp_path, "train.max_unscorable_steps=2")
    trainer.policy.reward_fn.fn = lambda prompts, completions, **_: [None] * len(completions)
    with caplog.at_level(logging.WARNING, logger="ibtpo"):
        trainer.step_and_record()
    assert trainer.unscorable_streak == 1
    assert "step 1: every reward was None" in caplog.text and "1 in a row" in caplog.text
    with pytest.raises(TrainingError, match=r"step 2: every reward was None.*2 in a row.*"
                                            r"train.max_unscorable_steps"):
        trainer.step_and_record()
    trainer.unscorable_streak = 1  # one scored trajectory resets the count
    trainer.check_unscorable({"rollout/num_trajectories": 8.0, "rollout/unscorable": 7.0})
    assert trainer.unscorable_streak == 0


def test_a_raising_reward_is_counted_unscorable_in_training(warm_checkpoint, tmp_path):
    trainer = make_trainer(warm_checkpoint, tmp_path)
    trainer.train_step()  # the function has scored: a later failure is one of its items
    trainer.policy.reward_fn.fn = lambda prompts, completions, **_: 1 / 0
    metrics = trainer.train_step()
    g = metrics["rollout/num_trajectories"]  # every completion failed: all unscorable
    assert metrics["rollout/reward_errors"] == g and metrics["rollout/unscorable"] == g
    assert metrics["rollout/reward_mean"] == 0.0


# --- stop signals --------------------------------------------------------------------------------
def _cli_child(argv):
    sys.exit(main(argv))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_writes_a_final_checkpoint_and_exits_cleanly(warm_checkpoint, tmp_path,
                                                                    signum):
    argv = ["train", "--config", "grpo", "--no-progress"] + [
        x for s in SMALL + [f"train.init={warm_checkpoint}", f"train.out_dir={tmp_path}",
                            "train.steps=500"] for x in ("--set", s)]
    child = multiprocessing.get_context("spawn").Process(target=_cli_child, args=(argv,))
    child.start()
    deadline = time.time() + 120
    while time.time() < deadline and not ((tmp_path / "metrics.jsonl").is_file()
                                          and len(read_metrics(tmp_path)) >= 3):
        time.sleep(0.2)
    os.kill(child.pid, signum)
    child.join(120)
    assert child.exitcode == 128 + signum  # handled: a process killed by it reports -signum
    last = read_metrics(tmp_path)[-1]["step"]
    assert 2 <= last < 500
    assert ckpt.latest_checkpoint(tmp_path).name == f"step-{last:08d}"
    with pytest.raises(ValueError, match="pass --resume"):
        make_trainer(warm_checkpoint, tmp_path)  # a fresh run may not overwrite it
    cfg = load_config([resolve_config_path("grpo")], SMALL + [
        f"train.init={warm_checkpoint}", f"train.out_dir={tmp_path}", "train.steps=500"])
    assert Trainer(cfg, resume=True, progress=False).step == last
