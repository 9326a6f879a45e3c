"""Dataset loaders: JSONL rows, seeded disjoint splits, errors naming file, line and field."""

from __future__ import annotations

import importlib.util
import json
import random

import pytest

from ibtpo.config import TaskConfig
from ibtpo.data import ArithmeticTask, DatasetTask, load_task
from ibtpo.data.loaders import load_jsonl


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def rows(n):
    return [{"prompt": f"{i}+1=?\n", "answer": i + 1, "solution": f"answer: {i + 1}",
             "source": "unit"} for i in range(n)]


def test_jsonl_rows_become_problems_with_extra_columns(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", rows(3)[:2] + ["", rows(3)[2]])  # blank line skipped
    problems = load_jsonl(path)
    assert [p.answer for p in problems] == ["1", "2", "3"]  # numbers are kept as text
    assert problems[0].meta == {"source": "unit"} and problems[0].solution == "answer: 1"
    assert problems[0].columns() == {"answer": "1", "source": "unit"}


def test_load_task_dispatches_on_the_name(tmp_path):
    assert isinstance(load_task(TaskConfig()), ArithmeticTask)
    path = write_jsonl(tmp_path / "d.jsonl", rows(20))
    assert isinstance(load_task(TaskConfig(name=str(path), eval_size=5)), DatasetTask)


def test_file_split_is_seeded_and_disjoint(tmp_path):
    data = rows(40) + [rows(40)[0]]  # a duplicate prompt must not leak into training
    path = write_jsonl(tmp_path / "d.jsonl", data)
    cfg = TaskConfig(name=str(path), eval_size=10, seed=3)
    task, again = load_task(cfg), load_task(cfg)
    held = {p.prompt for p in task.eval_set()}
    assert len(held) == 10 and task.eval_set() == again.eval_set()
    train = {p.prompt for p in task.train_batch(2000, random.Random(0))}
    assert not held & train and len(held | train) == 40
    other = load_task(TaskConfig(name=str(path), eval_size=10, seed=4))
    assert other.eval_set() != task.eval_set()


@pytest.mark.parametrize("bad_line, message", [
    ('{"prompt": "1+1=?", "answer": ', "d.jsonl:2: not valid JSON"),
    ('{"prompt": "1+1=?"}', "d.jsonl:2: field 'answer' is missing"),
    ('{"prompt": "", "answer": "2"}', "d.jsonl:2: field 'prompt': expected a non-empty string"),
    ('{"prompt": "1+1=?", "answer": null}', "d.jsonl:2: field 'answer'"),
    ('{"prompt": "1+1=?", "answer": "2", "n_terms": "two"}', "d.jsonl:2: field 'n_terms'"),
    ('["1+1=?", "2"]', "d.jsonl:2: expected a JSON object"),
])
def test_bad_rows_name_the_file_line_and_field(tmp_path, bad_line, message):
    path = write_jsonl(tmp_path / "d.jsonl", [rows(1)[0], bad_line])
    with pytest.raises(ValueError, match=message):
        load_jsonl(path)


def test_bad_task_names_and_sizes(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_task(TaskConfig(name=str(tmp_path / "missing.jsonl")))
    with pytest.raises(ValueError, match="expected 'arithmetic', a .jsonl/.parquet file"):
        load_task(TaskConfig(name="data.csv"))
    small = write_jsonl(tmp_path / "small.jsonl", rows(5))
    with pytest.raises(ValueError, match="5 distinct prompts, but task.eval_size=5"):
        load_task(TaskConfig(name=str(small), eval_size=5))
    empty = write_jsonl(tmp_path / "empty.jsonl", [""])
    with pytest.raises(ValueError, match="no rows"):
        load_task(TaskConfig(name=str(empty)))


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow installed")
def test_parquet_without_pyarrow_names_the_extra(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(ImportError, match=r"ibtpo\[data\]"):
        load_task(TaskConfig(name=str(path)))


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="datasets installed")
def test_hf_dataset_without_datasets_names_the_extra():
    with pytest.raises(ImportError, match=r"ibtpo\[data\]"):
        load_task(TaskConfig(name="hf:openai/gsm8k:train"))
