"""Reward functions in TRL's shape: `f(prompts, completions, **columns) -> list[float | None]`.

Each returns one reward per completion: 1.0 correct, 0.0 wrong, `None` when the item cannot be
scored (a malformed reference); callers count the `None`s, never silently treat them as zero.
Dataset columns arrive as keyword lists aligned with `completions`; all three verifiers read the
column `answer` (the reference) and ignore the others. A completion may be a string or, as TRL
passes conversational data, a list of messages (the last message's content is scored).

Registry `REWARDS` (config key `task.reward`):
- "arithmetic": the built-in task's verifier (ibtpo.data.arithmetic.verify): only the last
  "answer: <integer>" line counts.
- "numeric": the last number in the completion equals the reference number (relative tolerance
  1e-6; thousands separators "1,234" accepted; reference must be a plain number).
- "math_verify": the `math_verify` package (extra `math`):
  `verify(parse(answer), parse(completion))`
  (a reference that parses to nothing is retried wrapped in "$...$", as datasets often store bare
  LaTeX); `None` when it still parses to nothing.
"""

from __future__ import annotations

import math
import re
from typing import Callable

from ibtpo.data.arithmetic import verify

RewardFn = Callable[..., list]
NUMBER_RE = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[+-]?\.\d+")


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
                         "completions; expected one reference answer per completion")


def arithmetic_reward(prompts, completions, answer=None, **_) -> list[float | None]:
    """The built-in task's verifier on each completion (see `ibtpo.data.arithmetic.verify`)."""
    check_lengths(completions, answer)
    return [verify(completion_text(c), str(a)) for c, a in zip(completions, answer)]


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


def math_verify_reward(prompts, completions, answer=None, **_) -> list[float | None]:
    """math_verify's equivalence check; None when the reference cannot be parsed."""
    check_lengths(completions, answer)
    parse, mv_verify = import_math_verify()
    out = []
    for c, a in zip(completions, answer):
        gold = parse(str(a)) or parse(f"${a}$")  # bare LaTeX references ("\frac12") need $...$
        out.append(None if not gold else float(bool(mv_verify(gold, parse(completion_text(c))))))
    return out


REWARDS: dict[str, RewardFn] = {
    "arithmetic": arithmetic_reward,
    "numeric": numeric_reward,
    "math_verify": math_verify_reward,
}


def get_reward_fn(name: str) -> RewardFn:
    """The reward function registered as `name`; ValueError listing the valid names."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; valid rewards: {', '.join(REWARDS)}")
    return REWARDS[name]
