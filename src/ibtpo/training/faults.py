"""Faults a long run survives: stop signals, non-finite steps, reward functions that raise.

- `StopSignals`: while training, SIGINT and SIGTERM only ask the loop to stop; it finishes the
  current step, writes a final checkpoint and returns (the CLI then exits with 128 + signal
  number). A second SIGINT interrupts at once (KeyboardInterrupt, no checkpoint).
- Non-finite steps: a NaN or infinite loss or gradient norm skips the optimizer step (weights,
  optimizer state and learning-rate schedule untouched); the trainer counts such steps in a row
  and raises `TrainingError` when the count reaches [`train.max_nonfinite_steps`] (0 = never).
- `GuardedReward`: a reward function that raises is retried one completion at a time to find the
  prompts it fails on; [`task.reward_errors`] = "unscorable" logs each such prompt with the error
  and scores its trajectory None (counted in rollout/unscorable and rollout/reward_errors);
  "stop" raises `TrainingError` naming the prompt. A function that has never returned a reward
  and raises on every completion of a call (its first one, in practice: a wrong signature, a
  missing column) is a defect of the function: the run stops at once with its traceback,
  whatever `task.reward_errors` says. A reward out of range (`RewardRangeError`: NaN, or outside
  [0, 1] / `task.reward_range`) is a defect of the function too: it always stops the run.
- Unscorable steps: a step in which every trajectory's reward is None (the function returned
  None for all, or raised for all) trains on nothing; it is warned about, and
  [`train.max_unscorable_steps`] such steps in a row raise `TrainingError` (0 = never).
"""

from __future__ import annotations

import logging
import signal
import threading
import traceback

from ibtpo.data.rewards import RewardRangeError

log = logging.getLogger("ibtpo")


class TrainingError(RuntimeError):
    """A run that cannot go on (the CLI prints the message and exits with status 1)."""


class StopSignals:
    """Context manager: SIGINT / SIGTERM set `self.signum` instead of killing the process."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.signum = signum
        log.warning("ibtpo: %s received: finishing this step, then writing a checkpoint "
                    "(Ctrl-C again to stop at once)", signal.Signals(signum).name)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def nonfinite_message(step: int, streak: int, limit: int, norm: float) -> str:
    stop = f"the run stops after {limit} in a row" if limit else "the run never stops for this"
    return (f"step {step}: non-finite loss or gradient (grad norm {norm}); step skipped, weights "
            f"and optimizer unchanged ({streak} in a row; {stop}: train.max_nonfinite_steps)")


def unscorable_message(step: int, streak: int, limit: int) -> str:
    stop = f"the run stops after {limit} in a row" if limit else "the run never stops for this"
    return (f"step {step}: every reward was None (unscorable): this step trained on nothing; "
            f"check the reward function and the dataset's columns ({streak} in a row; {stop}: "
            "train.max_unscorable_steps)")


def never_scored_message(name: str, err: BaseException) -> str:
    trace = "".join(traceback.format_exception(type(err), err, err.__traceback__,
                                                chain=False)).rstrip()
    return (f"reward function {name!r} raised {type(err).__name__}: {err} on every completion "
            "before it ever returned a reward: a defect of the function (its signature, a "
            "column it reads), not of one item, so the run stops (whatever task.reward_errors "
            f"says). Its traceback:\n{trace}")


class GuardedReward:
    """A reward function in TRL's shape that never lets an exception through silently."""

    def __init__(self, fn, on_error: str, name: str):
        self.fn, self.on_error, self.name = fn, on_error, name
        self.errors = 0  # completions whose scoring raised, since the last `take_errors`
        self.scored = False  # has the function ever returned rewards

    def __call__(self, prompts, completions, **columns):
        try:
            rewards = self.fn(prompts=prompts, completions=completions, **columns)
        except RewardRangeError:  # a reward out of range is a bad function, not a bad item
            raise
        except Exception:  # find which items fail, one at a time
            rewards = self._one_by_one(prompts, completions, columns)
        self.scored = True
        return rewards

    def _one_by_one(self, prompts, completions, columns) -> list:
        """Each item scored alone; every failure logged (or the run stopped, see the module)."""
        results = [self._one(i, prompts, completions, columns) for i in range(len(completions))]
        failed = [(i, err) for i, (_, err) in enumerate(results) if err is not None]
        if failed and len(failed) == len(results) and not self.scored:
            raise TrainingError(never_scored_message(self.name, failed[0][1])) from failed[0][1]
        for i, err in failed:
            what = (f"reward function {self.name!r} raised {type(err).__name__}: {err} on prompt "
                    f"{str(prompts[i])[:200]!r}, completion {str(completions[i])[:200]!r}")
            if self.on_error == "stop":
                raise TrainingError(f"{what} (task.reward_errors=stop)") from err
            self.errors += 1
            log.warning("%s: scored as unscorable (task.reward_errors=unscorable)", what)
        return [reward for reward, _ in results]

    def _one(self, i: int, prompts, completions, columns) -> tuple:
        """(reward of item i, None), or (None, the exception it raised)."""
        try:
            one = {k: [v[i]] for k, v in columns.items()}
            rewards = self.fn(prompts=[prompts[i]], completions=[completions[i]], **one)
            return list(rewards)[0], None
        except RewardRangeError:
            raise
        except Exception as err:
            return None, err

    def __getattr__(self, name: str):
        """Everything else is the wrapped function's (e.g. a reward set's `pop_metrics`)."""
        if name == "fn":
            raise AttributeError(name)
        return getattr(self.fn, name)

    def take_errors(self) -> int:
        """Errors since the last call, and reset the count."""
        n, self.errors = self.errors, 0
        return n
