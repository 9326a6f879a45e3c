"""Dataset loaders: JSONL / Parquet / HF datasets / reasoning-gym rows, column mapping, prompt
template, seeded disjoint splits, bad rows reported with file, line (or index) and reason."""

from __future__ import annotations

import json
import random
import re
import sys

import pytest

from ibtpo.config import TaskConfig
from ibtpo.data import ArithmeticTask, DatasetTask, load_task
from ibtpo.data.loaders import load_hf, load_jsonl, load_parquet
from ibtpo.evaluation import reward_columns


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def rows(n):
    return [{"prompt": f"{i}+1=?\n", "answer": i + 1, "solution": f"answer: {i + 1}",
             "source": "unit"} for i in range(n)]


def test_jsonl_rows_become_problems_with_extra_columns(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", rows(3)[:2] + ["", rows(3)[2]])  # blank line skipped
    problems = load_jsonl(path).problems
    assert [p.answer for p in problems] == ["1", "2", "3"]  # numbers are kept as text
    assert problems[0].solution == "answer: 1"
    # every column but the prompt's, under its own name (as TRL), and answer as text
    assert problems[0].columns() == {"answer": "1", "solution": "answer: 1", "source": "unit"}


def test_reward_columns_keep_their_names_as_in_trl(tmp_path):
    # openr1's accuracy_reward(completions, solution, **kw) with task.answer_column=solution:
    # the column reached reward functions only as `answer`, so every call raised TypeError
    row = {"problem": "1+1?", "solution": "2", "answer": "other", "level": 3, "prompts": "x"}
    path = write_jsonl(tmp_path / "d.jsonl", [row])
    (p,) = load_jsonl(path, TaskConfig(prompt_column="problem|question",
                                       answer_column="solution")).problems
    assert p.columns() == {"answer": "2", "solution": "2", "level": 3}

    def accuracy_reward(completions, solution, **kw):
        return [float(s in c) for c, s in zip(completions, solution)]

    assert accuracy_reward(prompts=[p.prompt], completions=["it is 2"],
                           **reward_columns([p])) == [1.0]


def test_no_answer_column_when_no_reward_reads_one(tmp_path):
    # prompt / target columns and says(prompts, completions, target): "1200 of 1200 rows cannot
    # be used ... field 'answer' is missing", without naming task.answer_column
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"{i}?", "target": str(i)}
                                               for i in range(4)])
    with pytest.raises(ValueError, match=r"(?s)4 of 4 rows cannot be used.*field 'answer' is "
                       r"missing \(task.answer_column; fields: prompt, target\).*hint: set "
                       r"task.answer_column to the column of the reference answer, or "
                       r"task.answer_column=''"):
        load_task(TaskConfig(name=str(path), eval_size=1))
    task = load_task(TaskConfig(name=str(path), eval_size=1, answer_column=""))
    problems = task.train_set() + task.eval_set()
    assert sorted(p.columns()["target"] for p in problems) == ["0", "1", "2", "3"]
    assert all("answer" not in p.columns() and p.answer is None for p in problems)
    # a column named answer is then passed as it is, as any other column
    (p,) = load_jsonl(write_jsonl(tmp_path / "e.jsonl", [{"prompt": "q", "answer": 7}]),
                      TaskConfig(answer_column="")).problems
    assert p.columns() == {"answer": 7}


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


def test_small_datasets_hold_out_a_share(tmp_path, capsys):
    # 50 distinct prompts and the default task.eval_size=1000 failed ("expected more than
    # eval_size"); now 10% (task.eval_share) are held out, at least 1, at most all but one
    path = write_jsonl(tmp_path / "d.jsonl", rows(50))
    task = load_task(TaskConfig(name=str(path)))
    assert len(task.eval_set()) == 5 and len(task.train_set()) == 45
    assert "50 distinct prompts, not more than task.eval_size=1000: holding out 5" in \
        capsys.readouterr().err
    assert len(load_task(TaskConfig(name=str(path), eval_share=0.3)).eval_set()) == 15
    two = write_jsonl(tmp_path / "two.jsonl", rows(2))
    assert len(load_task(TaskConfig(name=str(two), eval_share=1.0)).eval_set()) == 1
    # more prompts than task.eval_size: exactly eval_size, as before
    assert len(load_task(TaskConfig(name=str(path), eval_size=49)).eval_set()) == 49


def test_rows_and_held_out_rows_given_in_python():
    train, held = rows(6), rows(8)[6:]
    task = load_task(TaskConfig(), train + held[:1], eval_rows=held)
    assert [p.prompt for p in task.eval_set()] == ["6+1=?\n", "7+1=?\n"]
    assert len(task.train_set()) == 6  # the held-out prompt given as training too is left out
    with pytest.raises(ValueError, match=r"dataset \(rows given in Python\): 1 distinct prompt"):
        load_task(TaskConfig(), rows(1))  # it was called "arithmetic" (the default task.name)
    with pytest.raises(ValueError, match="every training prompt is also held out"):
        load_task(TaskConfig(), held, eval_rows=held)
    with pytest.raises(ValueError, match="eval_dataset: held-out rows need a dataset"):
        load_task(TaskConfig(), eval_rows=held)


@pytest.mark.parametrize("bad_line, message", [
    ('{"prompt": "1+1=?", "answer": ', "d.jsonl:2: not valid JSON"),
    ('{"prompt": "1+1=?"}', "d.jsonl:2: field 'answer' is missing"),
    ('{"prompt": "", "answer": "2"}', "d.jsonl:2: field 'prompt': expected a non-empty string"),
    ('{"prompt": "1+1=?", "answer": null}', "d.jsonl:2: field 'answer'"),
    ('{"prompt": "1+1=?", "answer": "2", "n_terms": "two"}', "d.jsonl:2: field 'n_terms'"),
    ('["1+1=?", "2"]', "d.jsonl:2: expected an object with fields 'prompt' and 'answer'"),
])
def test_bad_rows_name_the_file_line_and_field(tmp_path, bad_line, message):
    path = write_jsonl(tmp_path / "d.jsonl", [rows(1)[0], bad_line])
    loaded = load_jsonl(path)
    assert len(loaded.problems) == 1 and len(loaded.bad) == 1
    assert re.match(message, loaded.bad[0].removeprefix(str(tmp_path) + "/")), loaded.bad
    with pytest.raises(ValueError, match=message):  # 1 bad row of 2 > max_bad_fraction 0.01
        load_task(TaskConfig(name=str(path), eval_size=1))


def test_bad_task_names_and_sizes(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_task(TaskConfig(name=str(tmp_path / "missing.jsonl")))
    with pytest.raises(ValueError, match="expected 'arithmetic', 'countdown', a .jsonl/.parquet "
                                         "file"):
        load_task(TaskConfig(name="data.csv"))
    one = write_jsonl(tmp_path / "one.jsonl", rows(1) * 3)
    with pytest.raises(ValueError, match=r"one.jsonl: 1 distinct prompt\(s\); a held-out split "
                                         r"\(task.eval_size, task.eval_share\) needs at least 2"):
        load_task(TaskConfig(name=str(one)))
    empty = write_jsonl(tmp_path / "empty.jsonl", [""])
    with pytest.raises(ValueError, match="no rows"):
        load_task(TaskConfig(name=str(empty)))


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if the `data` extra were missing
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(ImportError, match=r"ibtpo\[data\]"):
        load_task(TaskConfig(name=str(path)))


def test_hf_dataset_without_datasets_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match=r"ibtpo\[data\]"):
        load_task(TaskConfig(name="hf:openai/gsm8k:train"))


def test_a_small_share_of_bad_rows_is_skipped_and_reported(tmp_path, capsys):
    good = rows(30)
    bad = ['{"prompt": "x"}', "not json"]  # 2 bad of 32 rows = 6.25%
    path = write_jsonl(tmp_path / "d.jsonl", good[:10] + bad + good[10:])
    with pytest.raises(ValueError, match=r"2 of 32 rows cannot be used \(6.2%") as err:
        load_task(TaskConfig(name=str(path), eval_size=5, max_bad_fraction=0.05))
    assert "d.jsonl:11: field 'answer' is missing" in str(err.value)
    assert "d.jsonl:12: not valid JSON" in str(err.value)
    task = load_task(TaskConfig(name=str(path), eval_size=5, max_bad_fraction=0.1))
    assert len(task.eval_set()) + len(task._train) == 30
    report = capsys.readouterr().err
    assert "skipped 2 of 32 rows" in report and "d.jsonl:11" in report and "d.jsonl:12" in report


def test_columns_dotted_paths_chat_messages_and_prompt_template(tmp_path):
    row = {"question": [{"role": "system", "content": "be brief"},
                        {"role": "user", "content": "What is 2+2?"}],
           "reward_model": {"ground_truth": 4}, "level": "easy"}
    path = write_jsonl(tmp_path / "d.jsonl", [row, {**row, "level": None, "reward_model": {}}])
    cfg = TaskConfig(prompt_column="question", answer_column="reward_model.ground_truth",
                     prompt_template="[{level}] {prompt} Answer in \\boxed{{}}.")
    loaded = load_jsonl(path, cfg)
    (p,) = loaded.problems
    assert p.prompt == "[easy] What is 2+2? Answer in \\boxed{}." and p.answer == "4"
    assert p.meta == {"level": "easy", "reward_model": {"ground_truth": 4}}
    assert loaded.bad == [f"{path}:2: field 'reward_model.ground_truth' is missing "
                          "(task.answer_column; fields: question, reward_model, level)"]
    missing = load_jsonl(path, TaskConfig(prompt_column="question", answer_column="level",
                                          prompt_template="{topic}: {prompt}"))
    assert [b.split(": ", 1)[1] for b in missing.bad] == [
        "task.prompt_template names column 'topic' which the row lacks",
        "field 'level': expected a non-empty string or a number, got None"]


def table_rows():
    """Three good rows and two bad ones (index 1: empty prompt; index 3: no answer)."""
    return [{"prompt": "1+1=?", "answer": "2"}, {"prompt": "", "answer": "3"},
            {"prompt": "2+2=?", "answer": "4"}, {"prompt": "3+3=?", "answer": None},
            {"prompt": "4+4=?", "answer": "8"}]


def test_parquet_rows_good_and_malformed(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(table_rows()), path)
    loaded = load_parquet(path)
    assert [p.prompt for p in loaded.problems] == ["1+1=?", "2+2=?", "4+4=?"]
    assert [b.removeprefix(f"{path}: ") for b in loaded.bad] == [
        "row 1: field 'prompt': expected a non-empty string, got ''",
        "row 3: field 'answer': expected a non-empty string or a number, got None"]
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match="broken.parquet: not a readable Parquet file"):
        load_parquet(tmp_path / "broken.parquet")


def test_hf_dataset_from_a_local_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    saved = tmp_path / "saved"
    datasets.DatasetDict({"test": datasets.Dataset.from_list(table_rows())}).save_to_disk(saved)
    loaded = load_hf(f"hf:{saved}:test")
    assert [p.answer for p in loaded.problems] == ["2", "4", "8"]
    assert [b.split(": ", 1)[1][:5] for b in loaded.bad] == ["row 1", "row 3"]
    data_dir = tmp_path / "data_dir"  # a plain folder of data files, read by load_dataset
    write_jsonl(data_dir.mkdir() or data_dir / "train.jsonl", rows(4))
    assert len(load_hf(f"hf:{data_dir}").problems) == 4
    with pytest.raises(ValueError, match="cannot load the dataset"):
        load_hf(f"hf:{saved}:validation")


def test_reasoning_gym_task_is_generated_with_its_own_verifier():
    pytest.importorskip("reasoning_gym")
    from ibtpo.data.rewards import load_reward_fn

    cfg = TaskConfig(name="rg:basic_arithmetic", size=12, eval_size=4, seed=1,
                     reward="reasoning_gym")
    task, again = load_task(cfg), load_task(cfg)
    assert task.eval_set() == again.eval_set() and len(task.eval_set()) == 4
    problems = task.eval_set()
    reward = load_reward_fn(cfg.reward)
    columns = {k: [p.columns()[k] for p in problems] for k in ("answer", "rg_entry")}
    right = [f"so <answer>{p.answer}</answer>" for p in problems]
    untagged = [f"the answer is {p.answer}" for p in problems]  # the task asks for the tags
    wrong = ["<answer>seven</answer>"] * 4
    assert reward([p.prompt for p in problems], right, **columns) == [1.0] * 4
    assert reward([p.prompt for p in problems], untagged, **columns) == [0.0] * 4
    assert reward([p.prompt for p in problems], wrong, **columns) == [0.0] * 4
    with pytest.raises(ValueError, match="rg:no_such_task"):
        load_task(TaskConfig(name="rg:no_such_task"))
