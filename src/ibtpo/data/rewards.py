"""Reward functions in TRL's shape: `f(prompts, completions, **columns) -> list[float | None]`.

Each returns one reward per completion: 1.0 correct, 0.0 wrong, `None` when the item cannot be
scored (a malformed reference); callers count the `None`s, never silently treat them as zero.
Dataset columns arrive as keyword lists aligned with `completions`; the verifiers read the
column `answer` (the reference) and ignore the others. A completion may be a string or, as TRL
passes conversational data, a list of messages (the last message's content is scored).

Registry `REWARDS` (config key `task.reward`):
- "arithmetic": the built-in task's verifier (ibtpo.data.arithmetic.verify): only the last
  "answer: <integer>" line counts.
- "countdown": the built-in Countdown task's verifier (ibtpo.data.countdown.verify): every step
  checked, on the column `numbers` (the given numbers, a list or a string) and `answer` (the
  target). `task.reward=arithmetic` (the default) on `task.name=countdown` means this verifier
  (`task_reward_spec`): the default is the built-in task's own verifier.
- "numeric": the last number in the completion equals the reference number (relative tolerance
  1e-6; thousands separators "1,234" accepted; reference must be a plain number).
- "gsm8k": GSM8K's convention: the number after the last "#### " of the completion, or else its
  last number, equals the number after the reference's "#### " (or the reference number).
- "math_verify": the `math_verify` package (extra `math`): the reference is parsed first (a
  reference that parses to nothing is retried wrapped in "$...$", as datasets often store bare
  LaTeX; `None` when it still parses to nothing), then the completion, then
  `verify(gold, prediction)` (gold first: the check is not symmetric). math-verify bounds its
  parsing and checking time with SIGALRM, which only works in the main thread: there the limits
  are `MATH_VERIFY_TIMEOUT_S`; in any other thread (a data loader, a server) they are off.
- "reasoning_gym": a reasoning-gym task's own verifier (extra `tasks`): the text inside the last
  <answer>...</answer> of the completion, scored by the task's `score_answer` on the problem's
  entry (column `rg_entry`, set by the `rg:TASK` datasets).

`load_reward_fn(spec)` builds what `task.reward` names: one or more entries separated by commas,
each a registered name or a user function with the same signature given as `module:function`
(importable, the current directory included) or `path/to/file.py:function`. Several entries
are combined by `RewardSet` (weights `task.reward_weights`, see there).

Rewards lie in [0, 1]: IB-TPO reads a trajectory's reward as a success probability (the value
p̂ of a node is the mean reward below it; docs/ALGORITHM.md §1). A reward outside [0, 1] (TRL's
-1 for a bad format, a sum of several functions) stops the run at its first scoring with a
`RewardRangeError` naming the function, the value and the completion. A reward on another scale
is used through [`task.reward_transform`] (`RewardTransform`), applied to the combined reward:
- "threshold": reward >= [`task.reward_threshold`] -> 1.0, else 0.0. A binary success, the
  paper's own setting: every quantity of the method means what it says.
- "rescale": (reward - low) / (high - low) with [low, high] = [`task.reward_range`]; a reward
  outside the range stops the run. GRPO's advantage and A_GL are invariant to this affine map,
  but the IB-Score's ratio r = p̂(child) / p̂(parent) is not: where `low` sits changes it.
NaN and infinite rewards always stop the run.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import re
import sys
import threading
from pathlib import Path
from typing import Callable

from ibtpo.data.arithmetic import verify
from ibtpo.data.countdown import verify as verify_countdown

RewardFn = Callable[..., list]
TRANSFORMS = ("none", "threshold", "rescale")
NUMBER_RE = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[+-]?\.\d+")
GSM8K_MARK = "####"
MATH_VERIFY_TIMEOUT_S = 5  # math-verify's own default, per parse and per verify


def completion_text(completion) -> str:
    """The text of a completion: a string, or the content of the last message of a list."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise ValueError(f"completion: expected a string or a list of messages, got {completion!r:.80}")


def check_lengths(completions: list, answer: list) -> None:
    """ValueError unless there is one reference answer per completion."""
    if answer is None or len(answer) != len(completions):
        got = "none" if answer is None else len(answer)
        raise ValueError(f"reward: column 'answer' has {got} entries for {len(completions)} "
                         "completions; expected one reference answer per completion (the "
                         "dataset column named by task.answer_column)")


def arithmetic_reward(prompts, completions, answer=None, **_) -> list[float | None]:
    """The built-in task's verifier on each completion (see `ibtpo.data.arithmetic.verify`)."""
    check_lengths(completions, answer)
    return [verify(completion_text(c), str(a)) for c, a in zip(completions, answer)]


def countdown_reward(prompts, completions, answer=None, numbers=None, **_
                     ) -> list[float | None]:
    """The Countdown verifier on each completion (see `ibtpo.data.countdown.verify`)."""
    check_lengths(completions, answer)
    if numbers is None or len(numbers) != len(completions):
        raise ValueError("reward 'countdown': expected a column 'numbers' (the given numbers, one "
                         "entry per completion); the built-in task.name=countdown sets it")
    return [verify_countdown(completion_text(c), n, a)
            for c, n, a in zip(completions, numbers, answer)]


def parse_number(text: str) -> float | None:
    """A plain number ("42", "-3.5", "1,234") as a float, or None."""
    text = str(text).strip()
    if not NUMBER_RE.fullmatch(text):
        return None
    return float(text.replace(",", ""))


def last_number(text: str) -> float | None:
    """The last number that occurs in `text`, or None."""
    found = NUMBER_RE.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def numeric_match(completion: str, reference: str) -> float | None:
    """1.0 when the completion's last number equals the reference number; None if no reference."""
    ref = parse_number(reference)
    if ref is None:
        return None
    got = last_number(completion)
    return 1.0 if got is not None and math.isclose(got, ref, rel_tol=1e-6, abs_tol=1e-9) else 0.0


def numeric_reward(prompts, completions, answer=None, **_) -> list[float | None]:
    """Last number in each completion vs the reference number."""
    check_lengths(completions, answer)
    return [numeric_match(completion_text(c), str(a)) for c, a in zip(completions, answer)]


def import_math_verify():
    """(parse, verify) from math_verify, or an ImportError naming the extra to install."""
    try:
        from math_verify import parse
        from math_verify import verify as mv_verify
    except ImportError:
        raise ImportError("reward 'math_verify' needs the math_verify package: "
                          "pip install 'ibtpo[math]'") from None
    return parse, mv_verify


def math_verify_timeout() -> int | None:
    """math-verify's SIGALRM timeouts work only in the main thread: elsewhere they are turned
    off (and math-verify's warning about it silenced), instead of failing on every item."""
    if threading.current_thread() is threading.main_thread():
        return MATH_VERIFY_TIMEOUT_S
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    return None


def math_verify_match(parse, mv_verify, completion: str, reference: str,
                      timeout: int | None) -> float | None:
    """1.0 / 0.0 by math_verify, the reference parsed first; None if it parses to nothing."""
    gold = (parse(reference, parsing_timeout=timeout)
            or parse(f"${reference}$", parsing_timeout=timeout))  # bare LaTeX: "\frac12"
    if not gold:
        return None
    prediction = parse(completion, parsing_timeout=timeout)
    return float(bool(mv_verify(gold, prediction, timeout_seconds=timeout)))


def math_verify_reward(prompts, completions, answer=None, **_) -> list[float | None]:
    """math_verify's equivalence check; None when the reference cannot be parsed."""
    check_lengths(completions, answer)
    parse, mv_verify = import_math_verify()
    timeout = math_verify_timeout()
    return [math_verify_match(parse, mv_verify, completion_text(c), str(a), timeout)
            for c, a in zip(completions, answer)]


def gsm8k_number(text: str) -> float | None:
    """The number after the last "####" of `text`, or else the last number in `text`."""
    head, mark, tail = str(text).rpartition(GSM8K_MARK)
    if mark:
        found = NUMBER_RE.findall(tail.replace("$", ""))
        return float(found[0].replace(",", "")) if found else None
    return last_number(head or tail)


def gsm8k_reward(prompts, completions, answer=None, **_) -> list[float | None]:
    """GSM8K's check: the completion's "#### n" (else its last number) equals the reference's."""
    check_lengths(completions, answer)
    out = []
    for c, a in zip(completions, answer):
        ref, got = gsm8k_number(str(a)), gsm8k_number(completion_text(c))
        out.append(None if ref is None else float(
            got is not None and math.isclose(got, ref, rel_tol=1e-6, abs_tol=1e-9)))
    return out


def reasoning_gym_reward(prompts, completions, rg_entry=None, **_) -> list[float | None]:
    """A reasoning-gym task's own `score_answer` on the <answer> of each completion."""
    if rg_entry is None or len(rg_entry) != len(completions):
        raise ValueError("reward 'reasoning_gym': expected a column 'rg_entry' (one per "
                         "completion); it comes with the rg:TASK datasets")
    try:
        import reasoning_gym
        from reasoning_gym.utils import extract_answer
    except ImportError:
        raise ImportError("reward 'reasoning_gym' needs reasoning-gym: "
                          "pip install 'ibtpo[tasks]'") from None
    out = []
    for c, entry in zip(completions, rg_entry):
        if not isinstance(entry, dict) or "metadata" not in entry:
            out.append(None)
            continue
        score = reasoning_gym.get_score_answer_fn(entry["metadata"]["source_dataset"])
        out.append(float(score(answer=extract_answer(completion_text(c)), entry=entry)))
    return out


REWARDS: dict[str, RewardFn] = {
    "arithmetic": arithmetic_reward,
    "countdown": countdown_reward,
    "numeric": numeric_reward,
    "gsm8k": gsm8k_reward,
    "math_verify": math_verify_reward,
    "reasoning_gym": reasoning_gym_reward,
}


def get_reward_fn(name: str) -> RewardFn:
    """The reward function registered as `name`; ValueError listing the valid names."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; valid rewards: {', '.join(REWARDS)}, or "
                         "module:function / file.py:function")
    return REWARDS[name]


def import_module_from(where: str):
    """A module by import name (the current directory on the path) or by .py file path."""
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise ValueError(f"reward {where!r}: no such file")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    sys.path.insert(0, str(Path.cwd()))
    try:
        return importlib.import_module(where)
    finally:
        sys.path.remove(str(Path.cwd()))


def import_reward_fn(spec: str) -> RewardFn:
    """The user function `module:function` (or `file.py:function`); ValueError if not found."""
    where, _, name = spec.rpartition(":")
    try:
        module = import_module_from(where)
    except ImportError as err:
        raise ValueError(f"reward {spec!r}: cannot import {where!r} ({err})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"reward {spec!r}: {where!r} has no function {name!r}")
    return fn


class RewardRangeError(ValueError):
    """A reward outside what the run accepts (NaN, or outside [0, 1] / `task.reward_range`):
    a bad reward function, never an unscorable item (`GuardedReward` lets it through)."""


class RewardTransform:
    """What a raw reward becomes before IB-TPO reads it as a success probability in [0, 1].

    kind "none": checked, unchanged (the default: bit for bit what the function returned);
    "threshold": 1.0 when reward >= `threshold`, else 0.0; "rescale": (reward - low) /
    (high - low), a reward outside [low, high] raises `RewardRangeError`."""

    def __init__(self, kind: str = "none", threshold: float = 0.5,
                 low: float = 0.0, high: float = 1.0):
        if kind not in TRANSFORMS:
            raise ValueError(f"reward transform: got {kind!r}, expected one of {TRANSFORMS}")
        if not low < high:
            raise ValueError(f"reward range: expected low < high, got [{low}, {high}]")
        self.kind, self.threshold, self.low, self.high = kind, threshold, low, high

    @classmethod
    def of(cls, task) -> "RewardTransform":
        """The transform of a `TaskConfig` (`reward_transform`, `reward_threshold`,
        `reward_range`)."""
        low, high = task.reward_range
        return cls(task.reward_transform, task.reward_threshold, low, high)

    @property
    def success_level(self) -> float:
        """The transformed reward at and above which a completion counts as solved (evaluation's
        sampled pass@k): 1.0 (every function fully satisfied) for "none" and "threshold" (whose
        rewards are already 0 or 1); for "rescale", `threshold` (on the function's own scale)
        rescaled, clipped to [0, 1]."""
        if self.kind != "rescale":
            return 1.0
        return min(1.0, max(0.0, (self.threshold - self.low) / (self.high - self.low)))

    def __call__(self, value: float, source: str, completion) -> float:
        """`value` (finite, from `source`) mapped into [0, 1]; RewardRangeError when it cannot."""
        if self.kind == "threshold":
            return 1.0 if value >= self.threshold else 0.0
        low, high = (self.low, self.high) if self.kind == "rescale" else (0.0, 1.0)
        if not low <= value <= high:
            raise RewardRangeError(range_message(source, value, completion, self))
        return value if self.kind == "none" else (value - low) / (high - low)


def range_message(source: str, value: float, completion, transform: RewardTransform) -> str:
    """The error of a reward outside what `transform` accepts, with the ways out."""
    text = f"reward {source} returned {value!r} for completion {str(completion)[:120]!r}"
    if transform.kind == "rescale":
        return (f"{text}; expected a value in task.reward_range = [{transform.low}, "
                f"{transform.high}] (task.reward_transform=rescale)")
    return (f"{text}; expected a value in [0, 1] (IB-TPO reads a reward as a success "
            "probability). For a reward on another scale set task.reward_transform=threshold "
            "(reward >= task.reward_threshold counts as 1, else 0) or task.reward_transform="
            "rescale with task.reward_range=[LOW, HIGH]")


def checked_reward(value, source: str, completion) -> float | None:
    """`value` as a float (None stays None); RewardRangeError for NaN, inf or a non-number."""
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise RewardRangeError(f"reward {source} returned {value!r:.80} for completion "
                               f"{str(completion)[:120]!r}; expected a float or None") from None
    if not math.isfinite(out):
        raise RewardRangeError(f"reward {source} returned {out!r} for completion "
                               f"{str(completion)[:120]!r}; expected a finite float or None")
    return out


def reward_name(fn: RewardFn) -> str:
    """A readable name of a reward function (for metrics)."""
    return getattr(fn, "__name__", type(fn).__name__)


def weighted_mean(weights: list[float], rewards: list) -> float:
    """fsum(w * r) / fsum(w), a None reward counting as 0: exactly in [0, 1] for rewards in
    [0, 1] (each rounded w * r is at most w, and fsum and the division round correctly, hence
    monotonically: all-1 rewards give exactly 1.0, all-0 exactly 0.0)."""
    return math.fsum(w * (r or 0.0) for w, r in zip(weights, rewards)) / math.fsum(weights)


class RewardSet:
    """Several reward functions as one: their weighted mean, with each one's `None`s counted.

    The mean is `weighted_mean` (fsum over the weights as given): rewards in [0, 1] give a mean
    exactly in [0, 1], and equal rewards give that reward (six functions returning 1 give 1.0,
    not 0.9999999999999999). `weights` holds them normalised to sum to 1. An item
    is `None` (unscorable) only when every function returns None for it; otherwise a function's
    None counts as 0 in the mean (as TRL's nansum) and is counted in `reward/NAME/none`. One
    function alone is passed through unchanged. `pop_metrics()` returns and resets, per function
    when there are several, the mean of its non-None rewards and its None count.
    """

    def __init__(self, fns: list[tuple[str, RewardFn]], weights: list[float] | None = None,
                 transform: RewardTransform | None = None):
        self.transform = transform or RewardTransform()
        if not fns:
            raise ValueError("reward: expected at least one reward function")
        weights = list(weights) if weights else [1.0] * len(fns)
        if len(weights) != len(fns) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"reward weights: expected {len(fns)} non-negative weights with a "
                             f"positive sum, got {weights!r}")
        self.names, self.fns = [n for n, _ in fns], [f for _, f in fns]
        self.raw_weights = [float(w) for w in weights]
        self.weights = [w / sum(weights) for w in weights]
        self.stats = {n: [0.0, 0, 0] for n in self.names}  # sum, scored, None

    def __call__(self, prompts, completions, **columns) -> list[float | None]:
        per_fn = [self.call_one(name, fn, prompts, completions, columns)
                  for name, fn in zip(self.names, self.fns)]
        combined = per_fn[0] if len(per_fn) == 1 else [
            None if all(r is None for r in rs) else weighted_mean(self.raw_weights, rs)
            for rs in zip(*per_fn)]
        if self.transform.kind == "none":  # each function was checked in [0, 1]: so is the mean
            return combined
        source = " + ".join(map(repr, self.names)) if len(self.names) > 1 else repr(self.names[0])
        return [None if r is None else self.transform(r, source, c)
                for r, c in zip(combined, completions)]

    def call_one(self, name, fn, prompts, completions, columns) -> list[float | None]:
        rewards = list(fn(prompts=prompts, completions=completions, **columns))
        if len(rewards) != len(completions):
            raise ValueError(f"reward {name!r}: expected {len(completions)} rewards, "
                             f"got {len(rewards)}")
        rewards = [checked_reward(r, repr(name), c) for r, c in zip(rewards, completions)]
        if self.transform.kind == "none":
            for r, c in zip(rewards, completions):
                if r is not None:
                    self.transform(r, repr(name), c)  # RewardRangeError outside [0, 1]
        scored = [r for r in rewards if r is not None]
        self.stats[name][0] += sum(scored)
        self.stats[name][1] += len(scored)
        self.stats[name][2] += len(rewards) - len(scored)
        return rewards

    def pop_metrics(self) -> dict[str, float]:
        """reward/NAME (mean of its non-None rewards) and reward/NAME/none, when several."""
        out = {}
        if len(self.names) > 1:
            for name, (total, scored, none) in self.stats.items():
                out[f"reward/{name}"] = total / scored if scored else 0.0
                out[f"reward/{name}/none"] = float(none)
        self.stats = {n: [0.0, 0, 0] for n in self.names}
        return out


def reward_set_of(fns, weights: list[float] | None = None,
                  transform: RewardTransform | None = None) -> RewardSet:
    """One reward function in TRL's shape, or a list of them, as a `RewardSet` named by
    `reward_name`."""
    fns = list(fns) if isinstance(fns, (list, tuple)) else [fns]
    return RewardSet([(reward_name(f), f) for f in fns], weights, transform)


def task_reward_spec(task) -> str:
    """`task.reward` of a `TaskConfig`, where the default 'arithmetic' on the built-in Countdown
    task means its own verifier 'countdown'."""
    return "countdown" if task.name == "countdown" and task.reward == "arithmetic" else task.reward


def task_reward_fn(task) -> RewardSet:
    """The reward of a `TaskConfig`: `task_reward_spec`, `reward_weights`, `reward_transform`."""
    return load_reward_fn(task_reward_spec(task), task.reward_weights, RewardTransform.of(task))


def load_reward_fn(spec: str, weights: list[float] | None = None,
                   transform: RewardTransform | None = None) -> RewardSet:
    """What `task.reward` names: comma-separated registered names or module:function entries."""
    entries = [e.strip() for e in spec.split(",") if e.strip()]
    fns = []
    for entry in entries:
        fn = import_reward_fn(entry) if ":" in entry else get_reward_fn(entry)
        fns.append((entry if ":" not in entry else reward_name(fn), fn))
    return RewardSet(fns, weights, transform)
