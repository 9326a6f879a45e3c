"""One run per folder: a second process is refused with the holder's pid; a dead one's lock is
taken over; the holder's own process may open the folder again."""

from __future__ import annotations

import multiprocessing
import os
import socket

import pytest

from ibtpo.cli import main
from ibtpo.training.runlock import LOCK_FILE, RunLock, RunLockedError


def _hold(out_dir, ready, done):
    lock = RunLock(out_dir).acquire()  # held while the object lives
    ready.set()
    done.wait(30)
    lock.release()


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold, args=(tmp_path, ready, done))
    child.start()
    try:
        assert ready.wait(30)
        with pytest.raises(RunLockedError, match=rf"train.out_dir=.* is in use: process "
                                                 rf"{child.pid} on {socket.gethostname()} is "
                                                 r"training into it.*\.ibtpo\.lock"):
            RunLock(tmp_path).acquire()
    finally:
        done.set()
        child.join(30)
    lock = RunLock(tmp_path).acquire()  # the holder has exited: its lock is gone with it
    assert lock.held and (tmp_path / LOCK_FILE).read_text().startswith(f"pid={os.getpid()} ")


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    (tmp_path / LOCK_FILE).write_text(f"pid=999999999 host={socket.gethostname()}\n")
    lock = RunLock(tmp_path).acquire()
    assert lock.held
    assert (tmp_path / LOCK_FILE).read_text() == \
        f"pid={os.getpid()} host={socket.gethostname()}\n"
    again = RunLock(tmp_path).acquire()  # this process may open its own run again
    assert not again.held
    lock.release()
    assert not lock.held and (tmp_path / LOCK_FILE).exists()  # released, never deleted


def test_the_cli_refuses_a_folder_another_run_trains_into(warm_checkpoint, tmp_path, capsys):
    ctx = multiprocessing.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold, args=(tmp_path, ready, done))
    child.start()
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n')  # the other run's log
    settings = [f"train.init={warm_checkpoint}", f"train.out_dir={tmp_path}", "train.steps=1",
                "task.terms=[2]", "task.eval_size=30", "eval.size=2", "train.tensorboard=false"]
    try:
        assert ready.wait(30)
        code = main(["train", "--config", "grpo", "--no-progress",
                     *[x for s in settings for x in ("--set", s)]])
    finally:
        done.set()
        child.join(30)
    err = capsys.readouterr().err
    assert code == 2 and f"is in use: process {child.pid}" in err and "Traceback" not in err
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 0}\n'  # left as it was
