"""Models and tokenizers: tiny Llama presets, the character tokenizer, loading any HF causal LM.

Everything the default pipeline needs is built in code (no downloads):
- `build_tokenizer()`: a character-level `PreTrainedTokenizerFast`. Every character of
  `string.printable` (printable ASCII and "\\t\\n\\r\\x0b\\x0c") is one token; anything else
  maps to `<unk>`. Special tokens `<pad>`, `<bos>`, `<eos>`, `<unk>` take ids 0-3. Encoding
  adds no special tokens (use `encode_prompt` for BOS); decoding concatenates the characters, so
  `decode(encode(s)) == s` for any text made of known characters ("\\n\\n" and spaces included);
  text that looks like a special token ("<eos>") is encoded as plain characters.
- `PRESETS`: `LlamaConfig` keyword arguments for `nano` (~0.34M parameters: the default policy
  of the built-in task and the model of the tests), `mini` (~1M) and `tiny` (~3.4M).
- `load_model(name_or_path)`: a preset (fresh, seeded init), a Hugging Face checkpoint directory,
  a LoRA adapter directory (base model + adapters, extra `peft`), a `.gguf` file (dequantized by
  transformers, extra `gguf`) or a hub name (downloaded only when online).
- `stop_token_ids`: every id that ends a response (the tokenizer's EOS and every EOS of the
  model's config and generation config: chat models end a turn with e.g. `<|im_end|>`).
- `prompt_encoder`: text -> prompt ids, plain (BOS + text) or in the tokenizer's chat template.
- `save_checkpoint(...)`: an HF checkpoint directory (safetensors, tokenizer, `ibtpo.json`)
  written atomically: into a temp dir next to the target, then renamed over it.
- `fingerprint(model)`: a short hash of the weights and the kernel settings in force
  (`ibtpo.kernels`), recorded in every warm-up's `ibtpo.json` and every run's checkpoints and
  summary, so a reader sees whether two runs started from the same model.

Choice: attention runs with `attn_implementation="sdpa"`: measured on the 2-core CPU, a training
step (forward + backward + AdamW) of `tiny` on a batch of 128 x 60 tokens ran at 6.4k tokens/s
with "sdpa" against 5.4k with "eager".
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch
from huggingface_hub import constants as hf_constants
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging

from ibtpo import kernels
from ibtpo.inputs import check_vocab
from ibtpo.runs import EXTRA_FILE, read_extra  # noqa: F401 (read_extra: ibtpo.models' API)

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>",
                  "unk_token": "<unk>"}
ATTN_IMPLEMENTATION = "sdpa"
CHECKPOINT_MARKERS = ("config.json", EXTRA_FILE)  # files that show a directory is a checkpoint
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

PRESETS: dict[str, dict] = {
    # ~0.34M parameters: the default policy of the testbed and the model of the unit tests. On the
    # default task (4-8 terms) the warm-up stops at its 0.4 accuracy mark after 575 steps (seed 0).
    "nano": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4),
    # ~1M parameters.
    "mini": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=4),
    # ~3.4M parameters.
    "tiny": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=4),
}
COMMON_CONFIG = dict(max_position_embeddings=256, tie_word_embeddings=True, rope_theta=10000.0,
                     rms_norm_eps=1e-5, initializer_range=0.02)


def char_vocab() -> dict[str, int]:
    """Token -> id: the four special tokens, then the whitespace of `string.printable`
    ("\\t\\n\\r\\x0b\\x0c") and the printable ASCII characters 32-126."""
    chars = list("\t\n\r\x0b\x0c") + [chr(c) for c in range(32, 127)]
    tokens = list(SPECIAL_TOKENS.values()) + chars
    return {tok: i for i, tok in enumerate(tokens)}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The built-in character-level tokenizer (see the module docstring)."""
    core = Tokenizer(models.WordLevel(char_vocab(), unk_token=SPECIAL_TOKENS["unk_token"]))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, clean_up_tokenization_spaces=False,
                                  split_special_tokens=True, model_max_length=256,
                                  **SPECIAL_TOKENS)
    return tok


def preset_config(preset: str, tokenizer) -> LlamaConfig:
    """The `LlamaConfig` of a preset, with the tokenizer's vocabulary and special ids."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    return LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       attn_implementation=ATTN_IMPLEMENTATION, **COMMON_CONFIG, **PRESETS[preset])


def build_model(preset: str, tokenizer, seed: int = 0) -> LlamaForCausalLM:
    """A freshly initialised preset model; the same seed gives the same weights."""
    config = preset_config(preset, tokenizer)
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else as torch reads it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """'float32' | 'bfloat16' | 'float16' (or a torch.dtype) -> torch.dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(path_or_preset: str, device: str = "cpu", dtype: str = "float32",
               seed: int = 0, trust_remote_code: bool = False) -> tuple:
    """(model, tokenizer) from a preset name (fresh init with `seed`) or a checkpoint.

    A checkpoint (directory, LoRA adapter directory, .gguf file or hub name) is loaded with
    `AutoModelForCausalLM` / `AutoTokenizer` (see `load_pretrained`), running code shipped with it
    only when `trust_remote_code`. A tokenizer without a pad token gets its EOS token as pad.
    """
    torch_dtype, dev = resolve_dtype(dtype), resolve_device(device)
    if path_or_preset in PRESETS:
        tokenizer = build_tokenizer()
        model = build_model(path_or_preset, tokenizer, seed=seed)
    else:
        model, tokenizer = load_pretrained(path_or_preset, torch_dtype, trust_remote_code)
    return model.to(device=dev, dtype=torch_dtype), tokenizer


def load_pretrained(path: str, dtype: torch.dtype, trust_remote_code: bool = False) -> tuple:
    """A checkpoint directory, a LoRA adapter directory, a .gguf file or a hub name.

    Local paths load from local files only; a hub name downloads only when the process is online
    (HF_HUB_OFFLINE unset); code shipped with a checkpoint runs only when `trust_remote_code`.
    ValueError naming `path`, the part that failed (tokenizer or model) and what was expected.
    """
    local = Path(path)
    if (local / "adapter_config.json").is_file():
        return _named_failure(path, "LoRA checkpoint", "adapter_config.json, ibtpo.json",
                              lambda: load_adapter_checkpoint(local, dtype))
    if local.suffix == ".gguf":
        return _named_failure(path, "GGUF file", "a .gguf file", lambda: load_gguf(local, dtype))
    if not local.exists() and hf_constants.HF_HUB_OFFLINE:
        raise ValueError(f"{path!r}: no such file or directory (and, offline, not a hub name "
                         f"either: HF_HUB_OFFLINE is set); {EXPECTED_MODEL}")
    if not local.exists() and looks_local(path):
        raise ValueError(f"{path!r}: no such file or directory ({local.resolve()}; a local path, "
                         f"not a hub name 'org/name'){make_hint(path)}; {EXPECTED_MODEL}")
    kwargs = {"trust_remote_code": trust_remote_code,
              **({"local_files_only": True} if local.exists() else {})}
    tokenizer = _named_failure(path, "tokenizer", "tokenizer.json, tokenizer_config.json",
                               lambda: AutoTokenizer.from_pretrained(path, **kwargs))
    with quiet_hf_progress():
        model = _named_failure(path, "model", "config.json, model.safetensors",
                               lambda: AutoModelForCausalLM.from_pretrained(path, dtype=dtype,
                                                                            **kwargs))
    check_vocab(model, tokenizer, path)
    return model, with_pad_token(tokenizer)


LOCAL_FOLDERS = ("models", "runs")  # where ibtpo's own commands put checkpoints (make smollm2)


def looks_local(path: str) -> bool:
    """Is `path` written as a local path, never a hub name 'org/name': absolute, starting with
    '.' or '~', with a backslash or two or more '/', whose first part exists here, or under one
    of ibtpo's own folders (`models/`, `runs/`: `models/SmolLM2-135M-Instruct` before `make
    smollm2` is a missing folder, not a hub repository)."""
    parts = Path(path).parts
    return (Path(path).is_absolute() or path.startswith((".", "~")) or "\\" in path
            or path.count("/") >= 2 or (len(parts) > 1 and (Path(parts[0]).exists()
                                                          or parts[0] in LOCAL_FOLDERS)))


def make_hint(path: str) -> str:
    return " (make smollm2 puts SmolLM2-135M-Instruct there)" if "SmolLM2" in path else ""


class LoadError(ValueError):
    """A checkpoint that cannot be loaded, explained by ibtpo itself (names the file)."""


EXPECTED_MODEL = (f"expected a preset ({', '.join(PRESETS)}), a Hugging Face checkpoint directory, "
                  "a LoRA adapter directory, a .gguf file or a hub name (when online)")


def _named_failure(path: str, part: str, files: str, load: Callable):
    """`load()`; a failure becomes one ValueError naming `path` and `part` (tokenizers,
    safetensors, torch and transformers each raise their own exception types). Our own
    `LoadError`s, which name the file already, pass through."""
    try:
        return load()
    except LoadError:
        raise
    except Exception as err:
        raise ValueError(f"cannot load the {part} of {path!r} ({files}): {_reason(err)}; "
                         f"{EXPECTED_MODEL}") from None


def with_pad_token(tokenizer):
    """The tokenizer, its EOS token set as pad when it has no pad token."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_gguf(file: Path, dtype: torch.dtype) -> tuple:
    """A GGUF checkpoint through transformers (needs the `gguf` package: extra `gguf`).

    Transformers dequantizes the weights; the model is then an ordinary one (its GGUF
    quantization marker is dropped, so it saves as a plain HF checkpoint).
    """
    if not file.is_file():
        raise LoadError(f"{file}: no such .gguf file")
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise LoadError(f"loading {file} needs the gguf package: "
                         "pip install 'ibtpo[gguf]'") from None
    tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
    with quiet_hf_progress():
        model = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=dtype)
    return drop_quantization(model), with_pad_token(tokenizer)


def drop_quantization(model):
    """Forget how the weights were stored (GGUF): they are plain tensors now, and transformers
    refuses `save_pretrained` on a model that still carries a non-serialisable quantizer."""
    model.hf_quantizer = None
    for config in (model.config, getattr(model, "generation_config", None)):
        if config is not None and hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    return model


def load_adapter_checkpoint(directory: Path, dtype: torch.dtype) -> tuple:
    """A LoRA checkpoint: its base model (`base_model` of ibtpo.json, else the adapter config's
    `base_model_name_or_path`) with the saved adapters on top (extra `peft`)."""
    try:
        from peft import PeftModel
    except ImportError:
        raise LoadError(f"{directory} holds LoRA adapters: loading it needs peft: "
                         "pip install 'ibtpo[peft]'") from None
    base = read_extra(directory).get("base_model") or json.loads(
        (directory / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise LoadError(f"{directory}: adapter checkpoint without a base model "
                         "(expected base_model in ibtpo.json)")
    model, _ = load_model(base, "cpu", str(dtype).removeprefix("torch."))
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model = PeftModel.from_pretrained(model, directory, is_trainable=True)
    return model, with_pad_token(tokenizer)


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Every token id that ends a response: the tokenizer's EOS and each EOS id of the model's
    config and generation config (e.g. `<|im_end|>` and `<|endoftext|>` for ChatML models)."""
    ids = [tokenizer.eos_token_id]
    for config in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        eos = getattr(config, "eos_token_id", None)
        ids += list(eos) if isinstance(eos, (list, tuple)) else [eos]
    found = sorted({int(i) for i in ids if i is not None})
    if not found:
        raise ValueError("the tokenizer and the model declare no EOS token; expected at least one "
                         "stop id (set eos_token in the tokenizer or eos_token_id in the config)")
    return found


def chat_prompt_ids(tokenizer, text: str, system_prompt: str = "") -> list[int]:
    """`text` as one user message in the tokenizer's chat template, the assistant turn opened.

    The rendered text already holds the template's special tokens (BOS included where the
    template writes one), so it is tokenized without adding any.
    """
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": text})
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])


def prompt_encoder(tokenizer, chat_template: bool = False,
                   system_prompt: str = "") -> Callable[[str], list[int]]:
    """Prompt text -> prompt ids: `encode_prompt` (BOS + text), or the chat template's rendering
    when `chat_template` (ValueError when the tokenizer has none)."""
    if not chat_template:
        return functools.partial(encode_prompt, tokenizer)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("model.chat_template=true, but the tokenizer has no chat template; set "
                         "model.chat_template=false or use a tokenizer that has one")
    return functools.partial(chat_prompt_ids, tokenizer, system_prompt=system_prompt)


def _reason(err: Exception) -> str:
    text = " ".join(str(err).split())
    if "trust_remote_code" in text:
        return ("it ships its own Python code, which runs only with model.trust_remote_code=true "
                "(set it only for checkpoints you trust)")
    return f"{type(err).__name__}: {text[:400]}"


def weights_digest(state: dict) -> str:
    """sha256 of a state dict (each tensor's name, dtype, shape and bytes, in name order), its
    first 16 hex digits: equal digests mean bit-identical weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprint(model, state: dict | None = None) -> dict:
    """What a reader compares between two runs: the digest of the weights (`state`, or the
    model's own state dict), the kernel settings in force (`ibtpo.kernels.settings`) and their
    one-line description."""
    s = kernels.settings()
    return {"weights": weights_digest(model.state_dict() if state is None else state),
            "kernels": kernels.describe(s), "kernel_settings": s}


def describe_fingerprint(fp: dict) -> str:
    """``weights 1a2b3c4d5e6f7a8b, kernels portable (ATen AVX2, ...)``."""
    return f"weights {fp['weights']}, kernels {fp['kernels']}"


def write_checkpoint_files(model, tokenizer, directory: Path, extra: dict | None,
                           files: list[str | Path]) -> None:
    """Write the model (safetensors), the tokenizer, `ibtpo.json` and copies of `files`."""
    with quiet_hf_progress():
        model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    (directory / EXTRA_FILE).write_text(json.dumps(extra or {}, indent=2, default=str))
    for f in files:
        shutil.copy2(f, directory / Path(f).name)


@contextlib.contextmanager
def quiet_hf_progress():
    """Hide transformers' progress bars (e.g. "Writing model shards") for the duration."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def check_replaceable(out: Path, keep: list[str | Path]) -> None:
    """Refuse to replace an existing non-empty directory that is not a checkpoint."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"checkpoint path {out} exists and is not a directory")
    names = {p.name for p in out.iterdir()} - {Path(f).name for f in keep}
    if names and not names & set(CHECKPOINT_MARKERS):
        raise ValueError(f"refusing to replace {out}: it is not empty and holds no checkpoint "
                         f"({', '.join(CHECKPOINT_MARKERS)}); choose another output directory")


def save_checkpoint(model, tokenizer, out_dir: str | Path, extra: dict | None = None,
                    files: list[str | Path] = ()) -> None:
    """Write an HF checkpoint directory atomically.

    Files go to a temp dir next to `out_dir` (with copies of `files`, e.g. a training log that
    lives in `out_dir`); only when it is complete is the old directory moved aside, the new one
    renamed into place and the old one deleted. A failure while writing leaves the previous
    checkpoint untouched (and removes the temp dir). An existing non-empty `out_dir` that is not
    a checkpoint is never replaced (ValueError).
    """
    out = Path(out_dir)
    check_replaceable(out, list(files))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write_checkpoint_files(model, tokenizer, tmp, extra, list(files))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out)


def replace_dir(new: Path, target: Path) -> None:
    """Rename `new` over `target`, keeping the old `target` until the rename succeeded."""
    if not target.exists():
        os.replace(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, old / "ckpt")
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old / "ckpt", target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def encode_prompt(tokenizer, text: str) -> list[int]:
    """BOS + the tokens of `text`, no EOS, for any HF tokenizer.

    BOS is added only when the tokenizer has one and did not add it itself; an EOS the tokenizer
    appended on its own is removed.
    """
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if eos is not None and eos != bos and ids and ids[-1] == eos:
        plain = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = ids if plain and plain[-1] == eos else ids[:-1]
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


def count_parameters(model) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())
