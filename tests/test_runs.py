"""runs.py: a run's checkpoints and the config recorded with them, read without torch."""

import json
import subprocess
import sys

from ibtpo.runs import recorded_config


def test_a_training_checkpoint_records_its_whole_config_but_never_trust_remote_code(tmp_path):
    (tmp_path / "ibtpo.json").write_text(json.dumps({
        "config": {"task": {"name": "data.jsonl", "answer_column": "solution", "old_knob": 1},
                   "model": {"trust_remote_code": True, "dtype": "bfloat16"},
                   "gone": {"x": 1}},
        "task": {"name": "ignored: the whole config wins"}, "step": 3}))
    found, dropped = recorded_config(tmp_path)
    assert found == {"task": {"name": "data.jsonl", "answer_column": "solution"},
                     "model": {"dtype": "bfloat16"}}
    assert sorted(dropped) == ["gone", "task.old_knob"]


def test_a_warm_up_records_its_sections_and_other_models_nothing(tmp_path):
    (tmp_path / "ibtpo.json").write_text(json.dumps({
        "task": {"terms": [2]}, "model": {"name_or_path": "nano"}, "sft": {"steps": 100},
        "final_eval": {"pass@1": 0.3}}))
    assert recorded_config(tmp_path) == ({"task": {"terms": [2]}, "model": {
        "name_or_path": "nano"}, "sft": {"steps": 100}}, [])
    assert recorded_config(tmp_path / "none") == ({}, [])  # a preset name, a missing path
    (tmp_path / "plain").mkdir()
    assert recorded_config(tmp_path / "plain") == ({}, [])  # a plain HF directory


def test_runs_imports_without_torch():
    code = "import sys; sys.modules['torch'] = None\nimport ibtpo.runs\nprint('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
