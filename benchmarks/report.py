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
accuracy reaches 0.4; seeded and not timed, so every machine starts RL from the same model).
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
