"""The built-in task: multi-step chains of additions and subtractions (no downloads).

A problem with `n` terms is solved in `n - 1` steps, one operation per line, steps separated by the
step delimiter "\\n\\n" (ALGORITHM.md §1), then a final answer line:

    prompt   "23+45-12=?\\n"
    response "23+45=68\\n\\n68-12=56\\n\\nanswer: 56"

The prompt ends with "\\n", so the response starts right after the prompt tokens.

Choices (config keys in brackets):
- Number of terms drawn from [`task.terms`] with weights [`task.term_weights`] (empty = uniform);
  operands uniform in 1..[`task.max_operand`]; each operator uniform over [`task.ops`].
- Intermediate results and the answer stay >= 0 unless [`task.allow_negative`]: a chain that goes
  below 0 is redrawn (with the same number of terms, so the term mix is exactly as configured;
  this makes '+' more frequent than '-' in longer chains).
- Splits [`task.seed`, `task.eval_size`]: the held-out set is the first `eval_size` distinct
  problems drawn from the held-out stream of `task.seed` (`ibtpo.seeding`); training draws (from
  the caller's generator) reject any problem whose prompt is in the held-out set, so the splits
  are disjoint for every seed. A
  held-out set as large as the whole problem space (`count_problems`) is a ValueError.
- Verifier: only the last line of the form "answer: <integer>" counts (see `verify`).
"""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass, field

from ibtpo.config import TaskConfig
from ibtpo.data.splits import MAX_DRAWS_PER_PROBLEM, Splits

ANSWER_RE = re.compile(r"^[ \t]*answer:[ \t]*(\S.*?)[ \t]*$", re.MULTILINE)
INT_RE = re.compile(r"[+-]?\d+")
STEP_DELIMITER = "\n\n"


@dataclass(frozen=True)
class Problem:
    """One problem. `meta` holds extra dataset columns, passed to reward functions."""

    prompt: str
    answer: str | None  # None: the dataset has no reference answer (task.answer_column='')
    solution: str = ""  # the reference response (SFT target); "" when unknown
    n_terms: int = 0  # number of terms of a built-in problem; 0 when unknown
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def columns(self) -> dict:
        """The reward-function columns of this problem: `answer` (unless there is no reference
        answer, `task.answer_column=''`) plus `meta`."""
        if self.answer is None:
            return dict(self.meta)
        return {"answer": self.answer, **self.meta}


def draw_chain(cfg: TaskConfig, n: int, rng: random.Random) -> tuple[list[int], list[str]]:
    """Operands (n) and operators (n - 1) of one chain, before the sign check."""
    operands = [rng.randint(1, cfg.max_operand) for _ in range(n)]
    ops = [rng.choice(cfg.ops) for _ in range(n - 1)]
    return operands, ops


def running_totals(operands: list[int], ops: list[str]) -> list[int]:
    """The result of each step: totals[i] = value after applying ops[i]."""
    totals, value = [], operands[0]
    for op, b in zip(ops, operands[1:]):
        value = value + b if op == "+" else value - b
        totals.append(value)
    return totals


def make_problem(operands: list[int], ops: list[str]) -> Problem:
    """The prompt, step-by-step solution and answer of a chain."""
    totals = running_totals(operands, ops)
    expr = str(operands[0]) + "".join(f"{op}{b}" for op, b in zip(ops, operands[1:]))
    lefts = [operands[0]] + totals[:-1]
    steps = [f"{a}{op}{b}={c}" for a, op, b, c in zip(lefts, ops, operands[1:], totals)]
    solution = STEP_DELIMITER.join(steps + [f"answer: {totals[-1]}"])
    return Problem(prompt=f"{expr}=?\n", answer=str(totals[-1]), solution=solution,
                   n_terms=len(operands))


def sample_problem(cfg: TaskConfig, rng: random.Random) -> Problem:
    """One problem: the number of terms first (so `term_weights` hold exactly), then a chain,
    redrawn while it goes below 0 unless `cfg.allow_negative`."""
    n = rng.choices(cfg.terms, weights=cfg.term_weights or None)[0]
    for _ in range(MAX_DRAWS_PER_PROBLEM):
        operands, ops = draw_chain(cfg, n, rng)
        if cfg.allow_negative or min(running_totals(operands, ops)) >= 0:
            return make_problem(operands, ops)
    raise ValueError(f"task: no non-negative {n}-term chain found in {MAX_DRAWS_PER_PROBLEM} "
                     f"draws (ops={cfg.ops!r}); set task.allow_negative=true or add '+' to "
                     "task.ops")


def parse_int(text: str) -> int | None:
    """The integer `text` holds (surrounding spaces allowed), or None."""
    text = text.strip()
    return int(text) if INT_RE.fullmatch(text) else None


def extract_answer(completion: str) -> str | None:
    """The text after the last "answer:" line of a completion, or None when there is none."""
    found = ANSWER_RE.findall(completion)
    return found[-1] if found else None


def verify(completion: str, answer: str) -> float | None:
    """1.0 when the final answer line equals `answer`, 0.0 otherwise, None for a bad reference.

    A completion is wrong when it has no "answer: <integer>" line or its last one is not an
    integer equal to the reference; earlier answer lines do not count.
    """
    reference = parse_int(str(answer))
    if reference is None:
        return None
    given = extract_answer(completion)
    value = parse_int(given) if given is not None else None
    return 1.0 if value == reference else 0.0


def count_chains(cfg: TaskConfig, n: int) -> int:
    """Number of distinct n-term problems (dynamic programme over the running total)."""
    ways = Counter(range(1, cfg.max_operand + 1))  # running total -> number of chains
    for _ in range(n - 1):
        nxt: Counter = Counter()
        for total, count in ways.items():
            for b, op in itertools.product(range(1, cfg.max_operand + 1), set(cfg.ops)):
                value = total + b if op == "+" else total - b
                if cfg.allow_negative or value >= 0:
                    nxt[value] += count
        ways = nxt
    return sum(ways.values())


def count_problems(cfg: TaskConfig) -> int:
    """Number of distinct problems the config can produce (terms with weight 0 excluded)."""
    weights = cfg.term_weights or [1.0] * len(cfg.terms)
    return sum(count_chains(cfg, n) for n in {n for n, w in zip(cfg.terms, weights) if w > 0})


def check_split_sizes(cfg: TaskConfig) -> None:
    """ValueError unless the held-out set leaves problems to train on."""
    if "+" in cfg.ops and cfg.max_operand ** min(cfg.terms) > cfg.eval_size:
        return  # all-'+' chains alone outnumber the held-out set (skip the count)
    total = count_problems(cfg)
    if cfg.eval_size >= total:
        raise ValueError(f"task.eval_size={cfg.eval_size}, but task.terms={cfg.terms}, "
                         f"task.max_operand={cfg.max_operand}, task.ops={cfg.ops!r} give only "
                         f"{total} distinct problems; expected eval_size < {total} (e.g. "
                         f"{max(1, total // 4)}) so that training keeps problems of its own")


class ArithmeticTask:
    """The built-in task: `train_batch(n, rng)` and `eval_set()` over disjoint splits
    (`ibtpo.data.splits`)."""

    name = "arithmetic"

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg
        check_split_sizes(cfg)
        self.splits = Splits(cfg, sample_problem, "task.terms / task.max_operand")

    def eval_set(self) -> list[Problem]:
        """The held-out problems (a copy of the list; always the same for a given config)."""
        return list(self.splits.held)

    def train_batch(self, n: int, rng: random.Random) -> list[Problem]:
        """`n` training problems drawn with `rng` (never held-out ones)."""
        return self.splits.train_batch(n, rng)

    def settings(self) -> dict:
        """The task settings, for checkpoints' ibtpo.json."""
        return {"task": asdict(self.cfg)}
