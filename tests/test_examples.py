"""The examples/ scripts run as written (tiny settings: a few steps of the nano model)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ibtpo.metrics import read_metrics

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = {"task.terms": [2], "task.eval_size": 30, "eval.size": 4, "eval.k": 1,
        "sampling.max_new_tokens": 16, "train.steps": 1, "train.prompts_per_step": 2,
        "rollout.b0": 2, "rollout.rounds": 2, "train.tensorboard": False}


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_builtin_task_example(tmp_path):
    settings = {**TINY, "sft.steps": 3, "sft.eval_every": 0, "sft.eval_size": 4,
                "sft.warmup_steps": 1, "sft.stop_at_accuracy": 0.0}
    last = load("builtin_task").main(str(tmp_path), settings, progress=False)
    assert "eval/pass@1" in last
    assert [r["step"] for r in read_metrics(tmp_path / "ibtpo")] == [0, 1]
    assert (tmp_path / "sft" / "config.json").is_file()
    assert (tmp_path / "final" / "model.safetensors").is_file()


def test_local_dataset_example(tmp_path):
    example = load("local_dataset")
    assert example.correct(["q", "q"], ["so 7", "8 or 9"], answer=["7", "8"]) == [1.0, 0.0]
    settings = {**TINY, "task.eval_size": 20, "eval.size": 4}
    last = example.main("nano", None, str(tmp_path), settings, progress=False)
    assert "eval/pass@1" in last and (tmp_path / "data.jsonl").is_file()
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [0, 1]
    assert (tmp_path / "final" / "model.safetensors").is_file()
