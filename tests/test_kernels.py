"""Kernel pinning and fingerprints (ibtpo.kernels, ibtpo.models.fingerprint)."""

import json
import os
import platform
import subprocess
import sys

import pytest
import torch

from ibtpo import kernels
from ibtpo.models import build_model, fingerprint, load_model, weights_digest

X86 = platform.machine().lower() in ("x86_64", "amd64")


def test_pin_portable_sets_every_variable_and_native_leaves_the_environment(monkeypatch):
    for key in kernels.PORTABLE_ENV:
        monkeypatch.delenv(key, raising=False)
    kernels.pin("native")
    assert not any(key in os.environ for key in kernels.PORTABLE_ENV)
    kernels.pin("portable")
    assert {k: os.environ[k] for k in kernels.PORTABLE_ENV} == {
        "ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    with pytest.raises(ValueError, match="model.kernels: got 'fast'"):
        kernels.pin("fast")


@pytest.mark.skipif(not X86, reason="the portable kernels are x86-64's AVX2 ones")
def test_the_test_suite_runs_on_the_portable_kernels():
    s = kernels.settings()  # conftest pinned them before torch ran anything
    assert s["mode"] == "portable" and s["aten"] == "AVX2", s
    assert kernels.describe(s).startswith("portable (ATen AVX2, MKL AVX2, oneDNN AVX2, ")


@pytest.mark.skipif(not X86, reason="the portable kernels are x86-64's AVX2 ones")
def test_a_process_pins_before_torch_chooses_and_children_inherit_the_choice():
    code = ("from ibtpo import kernels; kernels.pin('portable'); import torch; "
            "print(torch.backends.cpu.get_cpu_capability())")
    env = {k: v for k, v in os.environ.items() if k not in kernels.PORTABLE_ENV}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "AVX2"


def test_weights_digest_sees_one_ulp_and_nothing_else(char_tokenizer):
    a, b = build_model("nano", char_tokenizer, seed=0), build_model("nano", char_tokenizer, seed=0)
    assert weights_digest(a.state_dict()) == weights_digest(b.state_dict())
    assert len(weights_digest(a.state_dict())) == 16
    with torch.no_grad():
        w = b.model.norm.weight
        w[0] = torch.nextafter(w[0], torch.tensor(2.0))  # one ulp on one weight
    assert weights_digest(a.state_dict()) != weights_digest(b.state_dict())
    fp = fingerprint(a)
    assert fp["weights"] == weights_digest(a.state_dict())
    assert fp["kernel_settings"]["torch"] == torch.__version__
    assert fp["kernels"] == kernels.describe(fp["kernel_settings"])


def test_warm_up_records_the_fingerprint_of_the_weights_it_saved(warm_checkpoint):
    notes = json.loads((warm_checkpoint / "ibtpo.json").read_text())
    recorded = notes["final_eval"]["fingerprint"]
    model, _ = load_model(str(warm_checkpoint))
    assert recorded["weights"] == weights_digest(model.state_dict())
    assert recorded["kernel_settings"] == kernels.settings()  # same process, same kernels
