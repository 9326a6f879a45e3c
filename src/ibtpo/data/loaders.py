"""Datasets from files: JSONL, Parquet, Hugging Face `datasets`; and `load_task(cfg)`.

Every source gives rows with the columns `prompt` (non-empty text) and `answer` (text or number,
kept as text); optional `solution` (the reference response, needed for SFT) and `n_terms`
(an integer, for per-difficulty evaluation); any other column is kept in `Problem.meta` and passed
to reward functions as a column.

`task.name` selects the source:
- "arithmetic": the built-in task (ibtpo.data.arithmetic);
- "path/to/file.jsonl" (or .json lines): one JSON object per line, blank lines skipped;
- "path/to/file.parquet": needs pyarrow (extra `data`);
- "hf:NAME" or "hf:NAME:SPLIT" (default split "train"): needs `datasets` (extra `data`).

Split (choice): the held-out set is `task.eval_size` distinct prompts (their first rows), picked
with the held-out stream of `task.seed` (`ibtpo.seeding`)
(so a file sorted by difficulty still gives a representative held-out set); the remaining rows
whose prompt is not held out form the training split, sampled with replacement by `train_batch`.
Bad input raises ValueError naming the file, the line (or row) and the field.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path

from ibtpo.config import TaskConfig
from ibtpo.data.arithmetic import ArithmeticTask, Problem
from ibtpo.inputs import check_utf8_lines
from ibtpo.seeding import HELD_OUT, stream_rng

KNOWN_FIELDS = ("prompt", "answer", "solution", "n_terms")


def check_text(value, where: str, name: str, required: bool) -> str:
    """`value` as text for field `name`; numbers are accepted for `answer`."""
    if value is None and not required:
        return ""
    if name == "answer" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or (required and not value.strip()):
        raise ValueError(f"{where}: field {name!r}: expected a non-empty string, got {value!r:.80}")
    return value


def row_to_problem(row, where: str) -> Problem:
    """One row (a dict) -> Problem; ValueError naming `where` and the field when it is bad."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object with fields 'prompt' and 'answer', "
                         f"got {type(row).__name__}")
    for name in ("prompt", "answer"):
        if name not in row:
            raise ValueError(f"{where}: field {name!r} is missing (fields: {', '.join(row)})")
    n_terms = row.get("n_terms", 0)
    if not isinstance(n_terms, int) or isinstance(n_terms, bool) or n_terms < 0:
        raise ValueError(f"{where}: field 'n_terms': expected an integer >= 0, got {n_terms!r}")
    return Problem(prompt=check_text(row["prompt"], where, "prompt", True),
                   answer=check_text(row["answer"], where, "answer", True),
                   solution=check_text(row.get("solution"), where, "solution", False),
                   n_terms=n_terms,
                   meta={k: v for k, v in row.items() if k not in KNOWN_FIELDS})


def parse_jsonl_line(line: str, where: str):
    """One JSONL line -> object; ValueError naming `where` when it is not valid JSON."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None


def load_jsonl(path: str | Path) -> list[Problem]:
    """Problems of a JSONL file (one object per line; blank lines skipped)."""
    path = Path(path)
    problems = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                where = f"{path}:{lineno}"
                problems.append(row_to_problem(parse_jsonl_line(line, where), where))
    return problems


def load_parquet(path: str | Path) -> list[Problem]:
    """Problems of a Parquet file (needs pyarrow: extra `data`)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"reading {path} needs pyarrow: pip install 'ibtpo[data]'") from None
    rows = pq.read_table(path).to_pylist()
    return [row_to_problem(row, f"{path}: row {i}") for i, row in enumerate(rows)]


def load_hf(spec: str) -> list[Problem]:
    """Problems of a Hugging Face dataset "hf:NAME[:SPLIT]" (needs `datasets`: extra `data`)."""
    name, _, split = spec[len("hf:"):].partition(":")
    try:
        import datasets
    except ImportError:
        raise ImportError(f"task.name={spec!r} needs the datasets package: "
                          "pip install 'ibtpo[data]'") from None
    rows = datasets.load_dataset(name, split=split or "train")
    return [row_to_problem(dict(row), f"{spec}: row {i}") for i, row in enumerate(rows)]


def load_problems(name: str) -> list[Problem]:
    """All rows of the dataset `name` (a file path or "hf:NAME[:SPLIT]")."""
    if name.startswith("hf:"):
        return load_hf(name)
    path = Path(name)
    if path.suffix not in (".jsonl", ".json", ".parquet"):
        raise ValueError(f"task.name={name!r}: expected 'arithmetic', a .jsonl/.parquet file or "
                         "'hf:NAME[:SPLIT]'")
    if not path.is_file():
        raise ValueError(f"task.name={name!r}: no such file")
    if path.suffix != ".parquet":
        check_utf8_lines(path)
    problems = load_parquet(path) if path.suffix == ".parquet" else load_jsonl(path)
    if not problems:
        raise ValueError(f"{path}: no rows; expected objects with fields 'prompt' and 'answer'")
    return problems


class DatasetTask:
    """A task over loaded problems, with the interface of ArithmeticTask (seeded split)."""

    def __init__(self, cfg: TaskConfig, problems: list[Problem]):
        first = list({p.prompt: i for i, p in reversed(list(enumerate(problems)))}.values())
        if len(first) <= cfg.eval_size:
            raise ValueError(f"{cfg.name}: {len(first)} distinct prompts, but task.eval_size="
                             f"{cfg.eval_size} are held out; expected more than eval_size")
        self.cfg, self.name = cfg, cfg.name
        held = set(stream_rng(cfg.seed, HELD_OUT).sample(sorted(first), cfg.eval_size))
        self._eval = [problems[i] for i in sorted(held)]  # distinct prompts
        eval_prompts = {p.prompt for p in self._eval}
        self._train = [p for p in problems if p.prompt not in eval_prompts]

    def eval_set(self) -> list[Problem]:
        """The held-out rows, in file order."""
        return list(self._eval)

    def train_set(self) -> list[Problem]:
        """Every training row (for checks over the whole split)."""
        return list(self._train)

    def train_batch(self, n: int, rng: random.Random) -> list[Problem]:
        """`n` training rows drawn with replacement with `rng`."""
        return [rng.choice(self._train) for _ in range(n)]

    def settings(self) -> dict:
        """The task settings, for checkpoints' ibtpo.json."""
        return {"task": asdict(self.cfg), "train_rows": len(self._train)}


def load_task(cfg: TaskConfig):
    """The task named by `cfg.name`: the built-in arithmetic task or a dataset (see above)."""
    if cfg.name == "arithmetic":
        return ArithmeticTask(cfg)
    return DatasetTask(cfg, load_problems(cfg.name))
