"""The built-in Countdown task: reach a target from a few numbers with + - * and exact /.

A testbed with several correct paths and dead ends (unlike the arithmetic task, whose every
problem has one correct chain): given 3-5 numbers and a target, combine two available numbers per
step, each given number used at most once and each result usable once after it is made, until
the last step makes the target; then an answer line. Steps are cut by the step delimiter
"\\n\\n" (ALGORITHM.md §1):

    prompt   "3 5 7 2 -> 24\\n"
    response "7-5=2\\n\\n3*2=6\\n\\n...\\n\\nanswer: 24"   (any valid path; see `verify`)

Choices (config keys in brackets):
- Numbers: how many from [`task.countdown_sizes`] (uniform), each uniform in
  1..[`task.countdown_max_number`] (repeats allowed); target uniform over the values some
  sequence of steps reaches that lie in [`task.countdown_targets`] = [low, high] and are not
  among the given numbers. A draw whose range holds no reachable value, or whose target has
  fewer than [`task.countdown_min_solutions`] reference paths, is redrawn: every problem is
  solvable, and by default (2) in more than one way.
- A step is `a op b=c` over non-negative integers: `-` must not go below 0, `/` must be exact
  (b > 0 divides a). The reference solutions (warm-up targets, solution counts) write each step
  larger operand first and leave out the steps that make 0 and the no-ops x*1 and x/1; the
  verifier accepts any valid step.
- A reference path uses every result it makes (no wasted step) and ends at the first step that
  makes the target. `Problem.meta` records per
  problem `numbers`, `solutions` (the number of distinct reference paths) and `dead_end_rate`
  (the share of the valid first steps from which no path reaches the target).
- Warm-up targets: each draw of a training problem carries a solution drawn uniformly among its
  reference paths (`sample_path`), so supervised warm-up sees every strategy, not one canonical
  path.
- Splits [`task.seed`, `task.eval_size`]: as the arithmetic task, the held-out set is the first
  `eval_size` distinct problems of the held-out stream of `task.seed`, and training draws reject
  held-out prompts.
- Reward "countdown" (`ibtpo.data.rewards`): 1.0 when `verify` accepts, else 0.0.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import asdict
from functools import lru_cache

from ibtpo.config import TaskConfig
from ibtpo.data.arithmetic import STEP_DELIMITER, Problem
from ibtpo.data.splits import MAX_DRAWS_PER_PROBLEM, Splits

OPS = "+-*/"
STEP_RE = re.compile(r"^[ \t]*(\d+)[ \t]*([-+*/])[ \t]*(\d+)[ \t]*=[ \t]*(\d+)[ \t]*$")
FINAL_RE = re.compile(r"^[ \t]*answer:[ \t]*(\d+)[ \t]*$")
PROMPT_RE = re.compile(r"^[ \t]*((?:\d+[ \t]+)*\d+)[ \t]*->[ \t]*(\d+)[ \t]*$")
Step = tuple[int, str, int, int]  # (a, op, b, c): "a op b=c"
State = tuple[tuple[int, ...], tuple[int, ...]]  # (unused given numbers, unused results)


def apply(a: int, op: str, b: int) -> int | None:
    """`a op b` over non-negative integers, or None when it is not a valid step."""
    if op == "+":
        return a + b
    if op == "*":
        return a * b
    if op == "-":
        return a - b if a >= b else None
    return a // b if b > 0 and a % b == 0 else None


def reference_steps(state: State) -> list[tuple[Step, State]]:
    """Every reference step from `state` = (unused given numbers, unused results), each sorted:
    larger operand first, no step that makes 0, no x*1 or x/1; each distinct step once, however
    often its operands repeat. The state a step leaves holds its result among the results."""
    givens, results = state
    pool = sorted([(v, 0) for v in givens] + [(v, 1) for v in results])
    out, seen = [], set()
    for i in range(len(pool)):
        for j in range(i):
            (a, _), (b, _) = pool[i], pool[j]  # a >= b: the pool is sorted
            rest = pool[:j] + pool[j + 1:i] + pool[i + 1:]
            for op in OPS:
                c = apply(a, op, b)
                key = (a, op, b, pool[i][1], pool[j][1])
                if not c or (op in "*/" and b == 1) or key in seen:
                    continue
                seen.add(key)
                left = (tuple(v for v, r in rest if not r),
                        tuple(sorted([v for v, r in rest if r] + [c])))
                out.append(((a, op, b, c), left))
    return out


def start_state(numbers) -> State:
    """The state before the first step: every given number unused, no results yet."""
    return (tuple(sorted(numbers)), ())


def ends(step: Step, left: State, target: int) -> bool:
    """Does a path end at `step` (it makes the target and every other result was used)?"""
    return step[3] == target and left[1] == (target,)


@lru_cache(maxsize=1 << 16)
def reachable(state: State) -> frozenset[int]:
    """Every value that some path from `state` ends on (every result used by the last step)."""
    found: set[int] = set()
    for step, nxt in reference_steps(state):
        if len(nxt[1]) == 1:
            found.add(step[3])
        found |= reachable(nxt)
    return frozenset(found)


@lru_cache(maxsize=1 << 16)
def count_paths(state: State, target: int) -> int:
    """Number of reference paths from `state` to `target`: sequences of steps whose last step,
    and only that one, makes the target, each earlier result used by a later step."""
    return sum(path_count_via(step, nxt, target) for step, nxt in reference_steps(state))


def path_count_via(step: Step, nxt: State, target: int) -> int:
    """Paths that go through `step` (leaving `nxt`): 1 when the path ends there."""
    if step[3] == target:
        return int(ends(step, nxt, target))
    return count_paths(nxt, target)


def sample_path(numbers: list[int], target: int, rng: random.Random) -> list[Step]:
    """One reference path from `numbers` to `target`, uniform over all of them."""
    state, path = start_state(numbers), []
    while True:
        steps = reference_steps(state)
        weights = [path_count_via(s, nxt, target) for s, nxt in steps]
        if not any(weights):
            raise ValueError(f"countdown: {target} cannot be reached from {numbers}")
        step, state = rng.choices(steps, weights=weights)[0]
        path.append(step)
        if ends(step, state, target):
            return path


def dead_end_rate(numbers: list[int], target: int) -> float:
    """Share of the reference first steps from which no path reaches the target."""
    steps = reference_steps(start_state(numbers))
    dead = sum(path_count_via(s, nxt, target) == 0 for s, nxt in steps)
    return dead / len(steps) if steps else 1.0


def format_path(path: list[Step], target: int) -> str:
    """The response text of a path: one step per delimited line, then the answer line."""
    lines = [f"{a}{op}{b}={c}" for a, op, b, c in path]
    return STEP_DELIMITER.join(lines + [f"answer: {target}"])


def make_problem(numbers: list[int], target: int, rng: random.Random) -> Problem:
    """The problem (prompt, answer, a uniformly drawn reference solution, meta) of a draw."""
    meta = {"numbers": list(numbers), "solutions": count_paths(start_state(numbers), target),
            "dead_end_rate": dead_end_rate(numbers, target)}
    return Problem(prompt=f"{' '.join(map(str, numbers))} -> {target}\n", answer=str(target),
                   solution=format_path(sample_path(numbers, target, rng), target),
                   n_terms=len(numbers), meta=meta)


def sample_problem(cfg: TaskConfig, rng: random.Random) -> Problem:
    """One solvable problem: numbers, then a target uniform over the reachable ones in range."""
    low, high = cfg.countdown_targets
    for _ in range(MAX_DRAWS_PER_PROBLEM):
        n = rng.choice(cfg.countdown_sizes)
        numbers = [rng.randint(1, cfg.countdown_max_number) for _ in range(n)]
        targets = sorted(v for v in reachable(start_state(numbers))
                         if low <= v <= high and v not in numbers)
        target = rng.choice(targets) if targets else None
        if target and count_paths(start_state(numbers), target) >= cfg.countdown_min_solutions:
            return make_problem(numbers, target, rng)
    raise ValueError(f"task.countdown_targets={cfg.countdown_targets}: no reachable target found "
                     f"in {MAX_DRAWS_PER_PROBLEM} draws of {cfg.countdown_sizes} numbers in "
                     f"1..{cfg.countdown_max_number} with at least {cfg.countdown_min_solutions} "
                     "solutions; widen the range or lower task.countdown_min_solutions")


def parse_numbers(numbers) -> list[int] | None:
    """The given numbers of a problem (a list of ints, or a string of them), or None."""
    if isinstance(numbers, str):
        numbers = numbers.replace(",", " ").split()
    try:
        out = [int(x) for x in numbers]
    except (TypeError, ValueError):
        return None
    return out if out and min(out) >= 0 else None


def parse_prompt(prompt: str) -> tuple[list[int], int] | None:
    """(numbers, target) of a prompt in the task's format ("3 5 7 2 -> 24"), or None."""
    match = PROMPT_RE.match(prompt.strip())
    return ([int(x) for x in match.group(1).split()], int(match.group(2))) if match else None


def check_step(available: Counter, line: str) -> int | None:
    """The value a step line makes, consuming its operands from `available`; None when the line
    is not a step, an operand is not available, or the arithmetic is wrong or invalid."""
    match = STEP_RE.match(line)
    if not match:
        return None
    a, op, b, c = int(match[1]), match[2], int(match[3]), int(match[4])
    need = Counter([a, b])
    if any(available[v] < k for v, k in need.items()) or apply(a, op, b) != c:
        return None
    available.subtract(need)
    available[c] += 1
    return c


def verify(completion: str, numbers, target) -> float | None:
    """1.0 when `completion` is a valid solution, 0.0 otherwise, None for a bad reference.

    Valid: every non-blank line but the last is a step `a op b=c` (op one of + - * /) whose
    arithmetic is right (`-` not below 0, `/` exact) and whose operands are available (a given
    number or an earlier result, each usable once); at least one step; the last step makes the
    target; the last line is `answer: <target>`. Anything else (text, a reused number, a wrong
    or inexact step, an unavailable operand, a wrong final value, a malformed line) is 0.0.
    """
    given = parse_numbers(numbers)
    target = str(target).strip()
    if given is None or not target.isdigit():
        return None
    lines = [line for line in completion.splitlines() if line.strip()]
    if len(lines) < 2:
        return 0.0
    final = FINAL_RE.match(lines[-1])
    available, value = Counter(given), None
    for line in lines[:-1]:
        value = check_step(available, line)
        if value is None:
            return 0.0
    ok = final is not None and int(final[1]) == int(target) == value
    return 1.0 if ok else 0.0


class CountdownTask:
    """The built-in Countdown task: `train_batch(n, rng)` and `eval_set()` over disjoint splits
    (`ibtpo.data.splits`; each training draw with a freshly drawn solution)."""

    name = "countdown"

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg
        self.splits = Splits(cfg, sample_problem, "task.countdown_sizes / "
                             "task.countdown_max_number / task.countdown_targets", eval_draws=20)

    def eval_set(self) -> list[Problem]:
        """The held-out problems (a copy of the list; always the same for a given config)."""
        return list(self.splits.held)

    def train_batch(self, n: int, rng: random.Random) -> list[Problem]:
        """`n` training problems drawn with `rng` (never held-out ones)."""
        return self.splits.train_batch(n, rng)

    def settings(self) -> dict:
        """The task settings, for checkpoints' ibtpo.json."""
        return {"task": asdict(self.cfg)}
