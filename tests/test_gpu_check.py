"""benchmarks/gpu_check.py runs in its CPU smoke mode and writes its table (no GPU needed)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_writes_one_table(tmp_path):
    """A fresh process (the script pins kernels before torch runs), one torch thread (a smoke run,
    not a measurement: under a busy CPU two threads wait on each other), ~10 s."""
    out = tmp_path / "gpu_check.md"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke",
                          "--steps", "1", "--out", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    text = out.read_text()
    assert "(smoke mode)" in text and "FAIL" not in text
    for row in ("| engine | ok", "| scheduler | ok", "| flex | skip", "| bf16 | ok",
                "| step times | ok", "| GRPO |", "| IB-TPO sync |", "| IB-TPO continuous |"):
        assert row in text, row
