"""What the three studies share: the testbed warm-up, the machine description, result sections.

Every study writes `benchmarks/results/<name>.md` (its table, the command that made it, the date,
the machine and the run time, and a reading generated from the numbers) plus PNGs and a JSON of
every number; `benchmarks/report.py` collects the sections into BENCHMARKS.md. Nothing in them is
typed by hand.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import sys
from pathlib import Path

from ibtpo import kernels

kernels.pin("portable")  # before torch runs anything (ibtpo/kernels.py)

import torch  # noqa: E402

from ibtpo.compare import DEMO_TASKS, same_config  # noqa: E402
from ibtpo.config import load_config  # noqa: E402
from ibtpo.models import read_extra  # noqa: E402
from ibtpo.provenance import same_code  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WARMUP_DIR = ROOT / "runs" / "testbed" / "sft"
# The Countdown testbed (Study 5): the task and its warm-up's stopping mark, shared by its scripts
# and by `ibtpo demo --task countdown`, whose warm-up is therefore this one.
COUNTDOWN = list(DEMO_TASKS["countdown"][0])
COUNTDOWN_WARMUP_DIR = ROOT / "runs" / "countdown" / "sft"
EQUIVALENCE = RESULTS / "runs" / "equivalent.json"  # written by benchmarks/equivalence.py


def accepted_code() -> frozenset[str]:
    """Code versions whose committed records count as today's (benchmarks/equivalence.py)."""
    return same_code(EQUIVALENCE)


def machine() -> str:
    """One line: CPU model, cores, threads torch uses, torch and Python versions."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads, Python {platform.python_version()}")


def command() -> str:
    """The command line that ran this study, relative to the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return shlex.join([".venv/bin/python", str(script), *sys.argv[1:]])


def warmup(overrides: list[str] = (), path: Path = WARMUP_DIR) -> Path:
    """The testbed's warm-up checkpoint (the default config's `ibtpo sft`), made when missing.

    The warm-up is defined by steps and seeds, so every machine makes the same model (up to
    floating-point differences between CPUs); a checkpoint whose recorded settings differ from
    the current defaults is made again (a setting added to the code since it was made counts as
    agreeing at its default, as for committed run records: `ibtpo.compare.same_config`).
    """
    from ibtpo.training.sft import run_sft

    cfg = load_config(overrides=[f"sft.out_dir={path}", *overrides])
    want = {"task": cfg.to_dict()["task"], "model": cfg.to_dict()["model"],
            "sft": {**cfg.to_dict()["sft"], "out_dir": None}}
    have = read_extra(path) if path.is_dir() else {}
    have = {**have, "sft": {**have.get("sft", {}), "out_dir": None}}
    if (all(isinstance(have.get(k), dict) and have[k] for k in want)  # a made warm-up
            and same_config({k: have[k] for k in want}, want)):  # fields added since: default
        print(f"== warm-up: reusing {path}")
        return path
    print(f"== warm-up: supervised training -> {path}")
    run_sft(cfg, progress=sys.stderr.isatty())
    return path


def write_section(name: str, title: str, body: str, seconds: float, data: dict,
                  runs: dict | None = None) -> Path:
    """Write results/<name>.md (header + body) and results/<name>.json; return the .md path.
    `runs` ({config: [run summaries]}): their training wall times are reported too, since an
    invocation that reuses finished runs takes only seconds itself."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    run_time = f"{seconds / 60:.1f} min"
    if runs:
        total = sum(r.get("wall_s", 0.0) for rs in runs.values() for r in rs)
        n = sum(len(rs) for rs in runs.values())
        run_time += (f" for this invocation; the {n} training runs it reports took "
                     f"{total / 60:.1f} min together (finished runs are reused)")
    header = (f"## {title}\n\n"
              f"- command: `{command()}`\n"
              f"- date: {datetime.date.today().isoformat()}\n"
              f"- machine: {machine()}\n"
              f"- run time: {run_time}\n\n")
    md = RESULTS / f"{name}.md"
    md.write_text(header + body.rstrip() + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2, default=str))
    print(f"wrote {md}")
    return md


def train_pass(trainer, batch) -> None:
    """One forward + backward of every micro-batch of `batch` as the trainer's update runs them,
    gradients discarded."""
    for mb, weight in trainer.micro_batches(batch):
        loss, _ = trainer.micro_step(mb)
        (loss * weight).backward()
    trainer.optimizer.zero_grad(set_to_none=True)
