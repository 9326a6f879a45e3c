"""``ibtpo export``: a policy as a plain Hugging Face checkpoint (LoRA merged, no GGUF marker).

The output directory holds `config.json`, `generation_config.json`, `model.safetensors` and the
tokenizer files (chat template included), which `AutoModelForCausalLM.from_pretrained` (and so
vLLM) loads as any other checkpoint, with the same logits as the policy that was exported. Any
model `ibtpo.models.load_model` reads can be exported: a training checkpoint, a LoRA adapter
checkpoint (merged into its base), a .gguf file (dequantized) or a preset; a training run's
directory (`train.out_dir`) stands for its newest checkpoint (`checkpoints/latest`).
"""

from __future__ import annotations

import copy
from pathlib import Path

from ibtpo.models import load_model, save_checkpoint
from ibtpo.runs import checkpoint_of  # noqa: F401 (ibtpo.export's API)
from ibtpo.training.lora import is_lora


def plain_model(model):
    """A plain transformers model computing what `model` computes: LoRA adapters merged into a
    copy of the base weights (the given model keeps its adapters). GGUF weights are plain
    already: `load_model` drops their quantization marker."""
    return copy.deepcopy(model).merge_and_unload() if is_lora(model) else model


def export_model(model, tokenizer, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Write `model` (merged when LoRA) and its tokenizer to `out_dir`, atomically."""
    save_checkpoint(plain_model(model), tokenizer, out_dir, {"exported": True, **(extra or {})})
    return Path(out_dir)


def run_export(model_path: str, out_dir: str, dtype: str = "float32") -> Path:
    """Load `model_path` (any form `load_model` reads) and export it to `out_dir`."""
    model, tokenizer = load_model(model_path, "cpu", dtype)
    return export_model(model, tokenizer, out_dir, {"source": str(model_path)})
