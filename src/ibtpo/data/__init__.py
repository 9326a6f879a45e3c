"""Data: the built-in arithmetic task, dataset loaders (JSONL, Parquet, HF datasets), rewards.

A task has `train_batch(n, rng) -> list[Problem]`, `eval_set() -> list[Problem]` (disjoint splits)
and `settings() -> dict`; `load_task(cfg.task)` builds the one a config names.
"""

from ibtpo.data.arithmetic import ArithmeticTask, Problem
from ibtpo.data.loaders import DatasetTask, load_task

__all__ = ["ArithmeticTask", "DatasetTask", "Problem", "load_task"]
