"""Which CPU kernels a run computes with: pinning them, and describing what ran.

torch, MKL and oneDNN pick their CPU kernels by processor: ATen's vectorised kernels by CPU
capability (AVX-512 or AVX2), MKL's BLAS by its code branch, oneDNN by its instruction set. The
same seeded run therefore gives other last bits on an AVX-512 machine than on an AVX2 one, and a
warm-up whose accuracy jumps turns them into another model (the built-in warm-up: step 575 and
held-out pass@1 0.438 on AVX-512 kernels, step 425 and 0.360 on AVX2 ones; BENCHMARKS.md,
Reproducibility).

``model.kernels`` chooses (DESIGN.md, Reproducibility):
- ``portable`` (default): the kernels every x86-64 CPU with AVX2 has, whatever the machine:
  ``ATEN_CPU_CAPABILITY=avx2``, ``MKL_CBWR=AVX2``, ``ONEDNN_MAX_CPU_ISA=AVX2``. A run on an AVX-512
  machine then computes bit for bit what it computes on an AVX2 one (measured: the warm-up's
  weights, losses and stopping step and the demo's GRPO runs match a real AVX2 machine's; its
  IB-TPO runs still differ slightly, cause not yet found). What it cannot pin: another CPU
  architecture (ARM), a CPU without AVX2 (ATen falls back to its DEFAULT kernels, and the
  fingerprint says so), another torch / MKL / oneDNN version, and CUDA kernels.
- ``native``: the libraries' own choice for this processor (faster where AVX-512 helps, bf16
  above all); the environment is left as it is. Measured on the nano warm-up (2-core AVX-512
  CPU, `benchmarks/kernels.py`): portable runs at 0.95x native's training tokens/s.

The three variables are read when torch first runs a kernel, so :func:`pin` must run before that:
the CLI pins before it imports torch, the test suite in its conftest, the benchmarks in their
common module; ``Trainer`` and ``run_sft`` pin again and warn when torch had already chosen other
kernels. Child processes inherit the variables. :func:`settings` and :func:`describe` report what
is in force, for the fingerprint of every warm-up and run (``ibtpo.models.fingerprint``).
"""

from __future__ import annotations

import os
import sys
import warnings

MODES = ("portable", "native")
PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
PORTABLE_CAPABILITY = "AVX2"  # what torch.backends.cpu.get_cpu_capability() reports when pinned


def pin(mode: str) -> None:
    """Select the kernels of ``mode`` (one of MODES) for this process and its children."""
    if mode not in MODES:
        raise ValueError(f"model.kernels: got {mode!r}, expected one of {', '.join(MODES)}")
    if mode == "native":
        return
    os.environ.update(PORTABLE_ENV)
    if "torch" in sys.modules:  # torch may have chosen its kernels already
        capability = sys.modules["torch"].backends.cpu.get_cpu_capability()
        if capability != PORTABLE_CAPABILITY:
            warnings.warn(f"model.kernels=portable: torch runs its {capability} kernels (it chose "
                          "them before the kernels were pinned, or this CPU has no AVX2); results "
                          "will differ from other machines' in the last bits. Call "
                          "ibtpo.kernels.pin('portable') before torch runs anything.",
                          stacklevel=2)


def settings() -> dict:
    """The kernel settings in force: mode, ATen capability, MKL branch, oneDNN ISA, threads,
    library versions."""
    import torch

    env = {k: os.environ.get(k, "") for k in PORTABLE_ENV}
    capability = torch.backends.cpu.get_cpu_capability()
    pinned = env == PORTABLE_ENV and capability == PORTABLE_CAPABILITY
    return {"mode": "portable" if pinned else "native", "aten": capability,
            "mkl_cbwr": env["MKL_CBWR"] or "auto", "onednn_isa": env["ONEDNN_MAX_CPU_ISA"] or "all",
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def describe(s: dict | None = None) -> str:
    """One line: ``portable (ATen AVX2, MKL AVX2, oneDNN AVX2, 2 threads, torch 2.13.0+cpu)``."""
    s = s or settings()
    return (f"{s['mode']} (ATen {s['aten']}, MKL {s['mkl_cbwr']}, oneDNN {s['onednn_isa']}, "
            f"{s['threads']} threads, torch {s['torch']})")

