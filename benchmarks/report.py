"""Collect the studies' result sections into BENCHMARKS.md (nothing in it is typed by hand).

    .venv/bin/python benchmarks/report.py

Reads benchmarks/results/<name>.md for every study in STUDIES that has run, in that order, and
writes BENCHMARKS.md at the repository root with links to the images under benchmarks/results/.
"""

from __future__ import annotations

import re

from common import RESULTS, ROOT

STUDIES = ("branching", "methods", "dynamics")
INTRO = """# Benchmarks

Every section below was written by the command it names (`benchmarks/<study>.py`), on the machine
and date it names, and collected here by `benchmarks/report.py`; the numbers, intervals and
readings are generated from the runs. Testbed: the built-in arithmetic task (4 to 8 terms of
single-digit operands, one step per operation, 1,000 held-out problems) and the `nano` model
(a 0.34M-parameter Llama with a character tokenizer) after the default warm-up (`ibtpo sft`: it
stops at the first validation, every 25 steps on 300 training-distribution problems, whose greedy
accuracy reaches 0.4; seeded and not timed).

**What reproduces** (measured 2026-12-06 with `ibtpo sft`, default config). The warm-up is a
function of its seeds *and of the CPU kernels* that torch, MKL and oneDNN run. On the AVX-512
kernels it stops at step 575 with held-out pass@1 0.438 (model.safetensors sha256
`0dc2ead27d5c992b…`); on the AVX2 kernels, forced on the same machine, at step 425 with 0.360
(sha256 `ed9e5158f56354f1…`), bit for bit the weights, losses and stopping step that a real AVX2
machine gave by default. A last-bit difference is enough: the warm-up's sudden accuracy jump
turns it into another model. Since then every command runs on the portable kernels
(`model.kernels=portable`, ibtpo/kernels.py), so every x86-64 machine with AVX2 starts RL from
the 425-step model; on one machine a seeded run is bit-identical when repeated (resume and
rerun tests). **The studies below ran before the kernels were pinned, from the 575-step
AVX-512 warm-up**: a rerun starts from the 425-step one, and its figures move (the demo, 3 seeds
x 100k tokens, pinned here: GRPO 0.485 ± 0.033, IB-TPO 0.496 ± 0.018 from 0.360, against 0.512
and 0.507 from 0.438 before). Across machines the pinned demo reproduces the warm-up and GRPO
(0.485 ± 0.033 on the real AVX2 machine too) but not yet IB-TPO exactly (0.499 ± 0.011 there,
28.8 against 29.0 trajectories per 1k tokens): a part of the tree path still computes other bits
there, within the interval. Their rerun under the pinned kernels is the next evidence round.
"""


def main() -> None:
    sections = [INTRO]
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
