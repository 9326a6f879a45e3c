"""Peak memory of making a frozen 16-bit copy of an fp32 model (the reference model, and the
FSDP rollout copy, under mixed precision: `ibtpo.training.precision`), before and after
`frozen_copy` (issue 26, item 15).

    .venv/bin/python benchmarks/frozen_copy.py [--hidden 1024] [--layers 8]

Each way runs in a fresh process on a Llama built in code (default: hidden 1024, 8 layers,
vocabulary 32,000: 134M parameters, 537 MB in fp32): "deepcopy, then cast" (the earlier code:
`copy.deepcopy(model).to(bfloat16)`) and `frozen_copy(model, bfloat16)`. Reported: the peak
resident memory the copy adds above the fp32 model (Linux's VmHWM, reset once the model is
built), in MB and per parameter.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import copy, json, sys
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from ibtpo.training.precision import frozen_copy
way, hidden, layers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cfg = LlamaConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                  num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                  vocab_size=32000, tie_word_embeddings=True)
with torch.device("cpu"):
    model = LlamaForCausalLM(cfg)
n = sum(p.numel() for p in model.parameters())
def peak():  # MB: the process's resident high-water mark (VmHWM, reset below)
    line = next(x for x in open("/proc/self/status") if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024
open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current resident size
before = peak()
ref = (copy.deepcopy(model).to(torch.bfloat16) if way == "deepcopy" else
       frozen_copy(model, torch.bfloat16))
print(json.dumps({"params": n, "added_mb": peak() - before,
                  "copy_mb": sum(p.numel() * p.element_size() for p in ref.parameters()) / 2**20}))
"""


def measure(way: str, hidden: int, layers: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, way, str(hidden), str(layers)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    args = p.parse_args()
    for way in ("deepcopy", "frozen_copy"):
        r = measure(way, args.hidden, args.layers)
        print(f"{way:12s} {r['params'] / 1e6:.0f}M parameters: the bf16 copy ({r['copy_mb']:.0f} "
              f"MB) added {r['added_mb']:.0f} MB of peak memory "
              f"({r['added_mb'] * 2**20 / r['params']:.1f} bytes per parameter)")


if __name__ == "__main__":
    main()
