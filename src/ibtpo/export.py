"""``ibtpo export``: a policy as a plain Hugging Face checkpoint (LoRA merged, no GGUF marker).

The output directory holds `config.json`, `generation_config.json`, `model.safetensors` and the
tokenizer files (chat template included), which `AutoModelForCausalLM.from_pretrained` (and so
vLLM) loads as any other checkpoint, with the same logits as the policy that was exported.
ibtpo trains on BOS + the prompt's tokens (`ibtpo.models.encode_prompt`); a tokenizer that has a
BOS token but does not add it itself (the built-in character tokenizer) is exported with a
post-processor that adds it (tokenizer.json), so `tokenizer(text)` in transformers gives the ids
ibtpo feeds the model. A tokenizer without BOS (Qwen, SmolLM2 chat models) or one that adds it
already is exported as it is; chat templates are tokenized without added special tokens, so they
are unaffected either way. Any
model `ibtpo.models.load_model` reads can be exported: a training checkpoint, a LoRA adapter
checkpoint (merged into its base), a .gguf file (dequantized) or a preset; a training run's
directory (`train.out_dir`) stands for its newest checkpoint (`checkpoints/latest`).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from tokenizers import processors

from ibtpo.models import encode_prompt, load_model, save_checkpoint
from ibtpo.runs import checkpoint_of  # noqa: F401 (ibtpo.export's API)
from ibtpo.training.lora import is_lora


def plain_model(model):
    """A plain transformers model computing what `model` computes: LoRA adapters merged into a
    copy of the base weights (the given model keeps its adapters). GGUF weights are plain
    already: `load_model` drops their quantization marker."""
    return copy.deepcopy(model).merge_and_unload() if is_lora(model) else model


BOS_PROBE = "12+7=?"  # a text every tokenizer encodes into a few ordinary tokens


def bos_tokenizer(tokenizer):
    """`tokenizer`, or a copy whose `tokenizer(text)` gives BOS + the text's ids as ibtpo encodes a
    prompt (`encode_prompt`): its post-processor adds BOS. The given tokenizer is never changed
    (a trainer keeps sampling with it)."""
    want = encode_prompt(tokenizer, BOS_PROBE)
    if tokenizer(BOS_PROBE)["input_ids"] == want or not getattr(tokenizer, "is_fast", False):
        return tokenizer
    out = copy.deepcopy(tokenizer)
    bos = out.bos_token
    out.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, out.bos_token_id)])
    if out(BOS_PROBE)["input_ids"] != want:
        logging.getLogger("ibtpo").warning(
            "export: the tokenizer encodes %r as %s, ibtpo as %s; exported as it is", BOS_PROBE,
            tokenizer(BOS_PROBE)["input_ids"], want)
        return tokenizer
    return out


def export_model(model, tokenizer, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Write `model` (merged when LoRA) and its tokenizer (adding BOS as ibtpo does,
    `bos_tokenizer`) to `out_dir`, atomically."""
    save_checkpoint(plain_model(model), bos_tokenizer(tokenizer), out_dir,
                    {"exported": True, **(extra or {})})
    return Path(out_dir)


def run_export(model_path: str, out_dir: str, dtype: str = "float32") -> Path:
    """Load `model_path` (any form `load_model` reads) and export it to `out_dir`."""
    model, tokenizer = load_model(model_path, "cpu", dtype)
    return export_model(model, tokenizer, out_dir, {"source": str(model_path)})
