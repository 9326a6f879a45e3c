"""Disjoint held-out and training splits of a built-in task whose problems a seeded sampler draws.

The held-out set is the first `task.eval_size` distinct problems of the held-out stream of
`task.seed` (`ibtpo.seeding`); a training draw (from the caller's generator) rejects any problem
whose prompt is held out, so the splits are disjoint for every seed. Shared by the arithmetic and
Countdown tasks (`sample(cfg, rng) -> Problem`).
"""

from __future__ import annotations

import random
from typing import Callable

from ibtpo.seeding import HELD_OUT, stream_rng

MAX_DRAWS_PER_PROBLEM = 1000


class Splits:
    """The held-out problems of `cfg` and training draws that never repeat one; `widen` names
    the fields that make more problems (for the errors), `eval_draws` caps the held-out draws
    per held-out problem."""

    def __init__(self, cfg, sample: Callable, widen: str, eval_draws: int = MAX_DRAWS_PER_PROBLEM):
        self.cfg, self.sample, self.widen = cfg, sample, widen
        self.held = self._draw_held_out(eval_draws)
        self.held_prompts = {p.prompt for p in self.held}

    def _draw_held_out(self, draws: int) -> list:
        rng, seen, out = stream_rng(self.cfg.seed, HELD_OUT), set(), []
        for _ in range(draws * self.cfg.eval_size):
            if len(out) == self.cfg.eval_size:
                return out
            problem = self.sample(self.cfg, rng)
            if problem.prompt not in seen:
                seen.add(problem.prompt)
                out.append(problem)
        raise ValueError(f"task.eval_size={self.cfg.eval_size}: only {len(out)} distinct problems "
                         f"found; lower task.eval_size or widen {self.widen}")

    def train_problem(self, rng: random.Random):
        """One training problem: any problem not in the held-out set."""
        for _ in range(MAX_DRAWS_PER_PROBLEM):
            problem = self.sample(self.cfg, rng)
            if problem.prompt not in self.held_prompts:
                return problem
        raise ValueError("task: every drawn problem is in the held-out set; lower "
                         f"task.eval_size or widen {self.widen}")

    def train_batch(self, n: int, rng: random.Random) -> list:
        """`n` training problems drawn with `rng` (never held-out ones)."""
        return [self.train_problem(rng) for _ in range(n)]
