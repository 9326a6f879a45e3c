"""Crash-safe checkpoints: SIGKILL at many points then resume = an uninterrupted run, bit for bit;
atomic pointer and retention; trainer states that would run code are refused; RNG discovery."""

import multiprocessing
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ibtpo.cli import main
from ibtpo.config import load_config, resolve_config_path
from ibtpo.metrics import read_metrics
from ibtpo.training import checkpoint as ckpt
from ibtpo.training.trainer import Trainer

RUN = ["task.terms=[2]", "task.max_operand=9", "task.eval_size=30", "eval.size=4", "eval.k=1",
       "sampling.max_new_tokens=16", "train.tensorboard=false", "train.eval_every=0",
       "train.prompts_per_step=2", "rollout.b0=2", "rollout.rounds=3", "train.steps=6",
       "train.ckpt_every=1", "train.keep_checkpoints=2", "train.lr=1e-3"]


def _train(init, out, resume, fault):
    if fault:
        os.environ[ckpt.FAULT_ENV] = fault
    cfg = load_config([resolve_config_path("ibtpo")],
                      RUN + [f"train.init={init}", f"train.out_dir={out}"])
    Trainer(cfg, resume=resume, progress=False).train()


def run_in_child(init, out, resume=False, fault=None) -> int:
    """Train in a child process (so that a SIGKILL hits only it); its exit code (-9: killed).
    Spawned, not forked: a fork after torch has run OpenMP threads can deadlock in the child."""
    proc = multiprocessing.get_context("spawn").Process(target=_train,
                                                       args=(init, out, resume, fault))
    proc.start()
    proc.join(300)
    return proc.exitcode


def final_weights(out: Path) -> dict:
    return load_file(ckpt.latest_checkpoint(out) / "model.safetensors")


def logged(out: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in read_metrics(out)]


# Each point SIGKILLs the run once; the resumed run must end exactly where the uninterrupted one
# does. ckpt:files@4 dies inside the write of checkpoint 4 (temp dir written, not renamed).
KILLS = ["step:rollout@3", "step:end@3", "ckpt:files@4", "ckpt:renamed@4", "ckpt:pointer@5"]


def test_killed_runs_resume_to_the_same_weights_bit_for_bit(warm_checkpoint, tmp_path):
    assert run_in_child(warm_checkpoint, tmp_path / "whole") == 0
    reference, reference_log = final_weights(tmp_path / "whole"), logged(tmp_path / "whole")
    assert [r["step"] for r in reference_log] == list(range(7))
    init = load_file(warm_checkpoint / "model.safetensors")
    assert not any(torch.equal(init[k], reference[k]) for k in reference)  # training moved them
    for i, fault in enumerate(KILLS):
        out = tmp_path / f"killed{i}"
        assert run_in_child(warm_checkpoint, out, fault=fault) == -9, fault  # really SIGKILLed
        assert run_in_child(warm_checkpoint, out, resume=True) == 0, fault
        weights = final_weights(out)
        assert all(torch.equal(weights[k], reference[k]) for k in reference), fault
        assert logged(out) == reference_log, fault  # rows after the checkpoint were redone
        names = sorted(p.name for p in (out / "checkpoints").iterdir())
        assert names == ["latest", "step-00000005", "step-00000006"], (fault, names)


# --- the directory of checkpoints ----------------------------------------------------------------
def write_step(out: Path, step: int, keep: int = 2) -> Path:
    return ckpt.write_checkpoint(out, step, lambda d: (d / "f.txt").write_text(str(step)), keep)


def test_latest_points_at_the_newest_and_only_k_are_kept(tmp_path):
    for step in (1, 2, 3):
        path = write_step(tmp_path, step)
    root = tmp_path / "checkpoints"
    assert path == root / "step-00000003" and ckpt.latest_checkpoint(tmp_path) == path
    assert os.readlink(root / "latest") == "step-00000003"  # relative: the run dir can move
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000002", "step-00000003"]
    assert write_step(tmp_path, 3) == path  # saving a step twice writes nothing


def test_a_failed_write_changes_nothing(tmp_path):
    write_step(tmp_path, 1)

    def disk_full(directory: Path):
        (directory / "half").write_text("x")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        ckpt.write_checkpoint(tmp_path, 2, disk_full, keep=2)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000001"]
    assert (root / "latest" / "f.txt").read_text() == "1"


def test_an_unpointed_complete_checkpoint_is_replaced_and_stale_temps_removed(tmp_path):
    write_step(tmp_path, 1)
    root = tmp_path / "checkpoints"
    (root / "step-00000002").mkdir()  # complete but never named by latest (killed before)
    (root / "step-00000002" / "f.txt").write_text("old")
    (root / ".tmp-step-00000002-123").mkdir()  # a write killed half-way
    assert ckpt.latest_checkpoint(tmp_path) == root / "step-00000001"
    write_step(tmp_path, 2)
    assert (root / "step-00000002" / "f.txt").read_text() == "2"
    assert not list(root.glob(".tmp-*"))


def test_without_latest_the_newest_step_directory_is_used(tmp_path):
    write_step(tmp_path, 1)
    write_step(tmp_path, 2)
    (tmp_path / "checkpoints" / "latest").unlink()
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000002"
    assert ckpt.latest_checkpoint(tmp_path / "nothing") is None


def test_truncate_log_keeps_rows_up_to_the_step_and_drops_a_torn_line(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 0}\n{"step": 1}\n{"step": 2}\n{"ste')
    ckpt.truncate_log(log, 1)
    assert log.read_text() == '{"step": 0}\n{"step": 1}\n'
    ckpt.truncate_log(log, -1)
    assert log.read_text() == ""


# --- safe loading --------------------------------------------------------------------------------
class _RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_trainer_state_that_would_run_code_is_refused(warm_checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--config", "grpo", "--no-progress", "--set", f"train.init={warm_checkpoint}",
            "--set", f"train.out_dir={out}", "--set", "train.steps=1", "--set",
            "train.prompts_per_step=2", "--set", "sampling.max_new_tokens=8", "--set",
            "eval.size=2", "--set", "task.eval_size=30", "--set", "train.tensorboard=false"]
    assert main(args) == 0
    state_file = ckpt.latest_checkpoint(out) / ckpt.STATE_FILE
    marker = tmp_path / "pwned"
    torch.save({"format": 1, "payload": _RunsCode(marker)}, state_file)
    with open(state_file, "rb") as f:  # the file really would run the command under pickle
        assert b"system" in f.read()
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*"))
    capsys.readouterr()
    assert main(args[:1] + ["--resume"] + args[1:]) == 2
    err = capsys.readouterr().err
    assert not marker.exists()
    assert "refused to load" in err and str(state_file) in err and "Traceback" not in err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*")) == before


def test_plain_pickle_would_have_run_it(tmp_path):
    """Control for the test above: the same bytes under plain pickle do execute the command."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_RunsCode(marker)))
    assert marker.exists()


@pytest.mark.parametrize("content, expected", [
    (b"", "corrupt or truncated"), (b"\x00\xffnot a zip", "corrupt or truncated"),
])
def test_corrupt_trainer_state_is_a_clear_error(tmp_path, content, expected):
    path = tmp_path / "trainer_state.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=expected):
        ckpt.load_state(path)


def test_trainer_state_with_a_missing_field_is_a_clear_error(tmp_path):
    path = tmp_path / "trainer_state.pt"
    torch.save({"format": 1, "step": 3}, path)
    with pytest.raises(ValueError, match="field 'generated_tokens': expected int"):
        ckpt.load_state(path)


# --- RNG states ----------------------------------------------------------------------------------
class Streams:  # an ibtpo-like holder of several RNG streams
    __module__ = "ibtpo.test"

    def __init__(self):
        self.data = random.Random(1)
        self.by_purpose = {"branch": random.Random(2), "noise": torch.Generator().manual_seed(3),
                           "np": np.random.default_rng(4)}
        self.alias = self.data  # the same object twice is saved once
        self.legacy = np.random.RandomState(5)


def draw(s: Streams) -> tuple:
    return (s.data.random(), s.by_purpose["branch"].random(),
            torch.rand(2, generator=s.by_purpose["noise"]).tolist(),
            float(s.by_purpose["np"].random()), float(s.legacy.rand()), random.random(),
            float(np.random.rand()), torch.rand(1).item())


def test_every_rng_stream_is_found_saved_and_restored(tmp_path):
    owner = Streams()
    assert sorted(ckpt.find_rngs(owner)) == ["by_purpose.branch", "by_purpose.noise",
                                             "by_purpose.np", "data", "legacy"]
    draw(owner)
    torch.save(ckpt.capture_rngs(owner), tmp_path / "s.pt")
    expected = draw(owner)
    other = Streams()
    ckpt.restore_rngs(other, torch.load(tmp_path / "s.pt", weights_only=True), "s.pt")
    assert draw(other) == expected


def test_restoring_into_other_rng_streams_is_a_clear_error(tmp_path):
    state = ckpt.capture_rngs(Streams())
    state["objects"].pop("legacy")
    with pytest.raises(ValueError, match="RNG streams"):
        ckpt.restore_rngs(Streams(), state, "x")
