"""Collect the studies' result sections into BENCHMARKS.md (nothing in it is typed by hand).

    .venv/bin/python benchmarks/report.py

Reads benchmarks/results/<name>.md for every study in STUDIES that has run, in that order, and
writes BENCHMARKS.md at the repository root with links to the images under benchmarks/results/.
"""

from __future__ import annotations

import json
import re

from common import RESULTS, ROOT

STUDIES = ("branching", "methods", "dynamics", "pressure", "countdown_warmup",
           "branching_countdown", "countdown_pilot",
           "countdown_study")
INTRO = """# Benchmarks

Every section below was written by the command it names (`benchmarks/<study>.py`), on the machine
and date it names, and collected here by `benchmarks/report.py`; the numbers, intervals and
readings are generated from the runs. Two testbeds. Studies 1–4: the built-in arithmetic task,
where every problem has one correct chain of steps; Study 5: the built-in Countdown task
(`task.name=countdown`: reach a target from 3 or 4 numbers with + − × ÷, several correct paths
and many dead ends per problem), built to test the paper's claim where exploration decides.
Studies 1–4's testbed: the built-in arithmetic task (4 to 8 terms of
single-digit operands, one step per operation, 1,000 held-out problems) and the `nano` model
(a 0.34M-parameter Llama with a character tokenizer) after the default warm-up (`ibtpo sft`: it
stops at the first validation, every 25 steps on 300 training-distribution problems, whose greedy
accuracy reaches 0.4; seeded and not timed).

**What reproduces** (measured with `ibtpo sft`, default config, and `benchmarks/repeat.py`).
- *The warm-up* is a function of its seeds *and of the CPU kernels* that torch, MKL and oneDNN
  run. On the AVX-512 kernels it stops at step 575 with held-out pass@1 0.438 (sha256
  `0dc2ead27d5c992b…`); on the AVX2 kernels at step 425 with 0.360 (sha256 `ed9e5158f56354f1…`),
  bit for bit what a real AVX2 machine gave. Every command now runs on the portable (AVX2)
  kernels (`model.kernels=portable`), so every x86-64 machine with AVX2 starts RL from the
  425-step model (re-made on 2026-12-06: the same sha256).
- *A seeded run on one machine* repeats bit for bit: REPEAT_LINE
- *Across machines*, before per-row streams, the pinned demo reproduced the warm-up and GRPO bit
  for bit on the AVX2 machine, but not IB-TPO (0.499 ± 0.011 there against 0.496 ± 0.018 here,
  within the interval). Since then every sampled token is drawn from an integer counter-based
  stream (`rollout/streams.py`) instead of torch's exponential kernel (which calls MKL's random
  number library); whether that removes IB-TPO's difference is not measured (no second machine).
  One cause remains: sibling steps with identical tokens have IB-Scores equal in exact arithmetic,
  told apart by the last bits of their log-probs, so kernels that round differently may branch
  from the other one (seen between the two schedulers: docs/PERFORMANCE.md, "Ties break on last
  bits").
- *Every study below runs on the 425-step warm-up and per-row streams.* Studies 2–4 are made of
  committed run records (benchmarks/results/runs/), each with its resolved config, code version,
  warm-up digest and final weights digest. A study reuses a record on any machine only when its
  config and warm-up match and its code version is today's (or one that
  `benchmarks/equivalence.py` showed to compute what today's does: the pairs in
  results/runs/equivalent.json); a stale record is rerun, never mixed in. A rerun elsewhere can
  check bit-identity run by run. Studies 2–3 were first run (until 2026-12-06) on the 575-step
  warm-up and an earlier sampler; their figures here are the rerun's.
"""


def repeat_line() -> str:
    """The same-machine repeat measurement (results/repeat.json), as a sentence."""
    path = RESULTS / "repeat.json"
    if not path.is_file():
        return "not measured yet (`benchmarks/repeat.py`)."
    data = json.loads(path.read_text())
    parts = [f"{name} {'identical' if r['identical_weights'] else 'DIFFERENT'} final weights "
             f"(digest {r['weights'][0]}), {r['differing_metric_values']} differing metric "
             f"values over {r['steps']} steps" for name, r in data["configs"].items()]
    return (f"each config trained twice with one seed to {data['budget']:,} tokens gave "
            f"{'; '.join(parts)} ({data['machine']}).")


def main() -> None:
    sections = [INTRO.replace("REPEAT_LINE", repeat_line())]
    for name in STUDIES:
        md = RESULTS / f"{name}.md"
        if md.is_file():
            text = md.read_text()
            link = r"\]\((?!http)([^)]+\.png)\)"
            sections.append(re.sub(link, r"](benchmarks/results/\1)", text))
        else:
            sections.append(f"## {name}\n\nNot run yet: `.venv/bin/python benchmarks/{name}.py`.\n")
    (ROOT / "BENCHMARKS.md").write_text("\n".join(sections))
    print(f"wrote {ROOT / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
