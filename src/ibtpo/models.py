"""Models and tokenizers: tiny Llama presets, the character tokenizer, loading any HF causal LM.

Everything the default pipeline needs is built in code (no downloads):
- `build_tokenizer()`: a character-level `PreTrainedTokenizerFast`. Every character of
  `string.printable` (printable ASCII and "\\t\\n\\r\\x0b\\x0c") is one token; anything else
  maps to `<unk>`. Special tokens `<pad>`, `<bos>`, `<eos>`, `<unk>` take ids 0-3. Encoding
  adds no special tokens (use `encode_prompt` for BOS); decoding concatenates the characters, so
  `decode(encode(s)) == s` for any text made of known characters ("\\n\\n" and spaces included);
  text that looks like a special token ("<eos>") is encoded as plain characters.
- `PRESETS`: `LlamaConfig` keyword arguments for `tiny-test` (~0.4M parameters, for tests) and
  `tiny` (~3M, the default policy of the built-in task).
- `load_model(name_or_path)`: a preset (fresh, seeded init) or a Hugging Face checkpoint directory
  (local files only).
- `save_checkpoint(...)`: an HF checkpoint directory (safetensors, tokenizer, `ibtpo.json`)
  written atomically: into a temp dir next to the target, then renamed over it.

Choice: attention runs with `attn_implementation="sdpa"`: measured on the 2-core CPU, a training
step (forward + backward + AdamW) of `tiny` on a batch of 128 x 60 tokens ran at 6.4k tokens/s
with "sdpa" against 5.4k with "eager".
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging

from ibtpo.inputs import check_vocab

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>",
                  "unk_token": "<unk>"}
ATTN_IMPLEMENTATION = "sdpa"
EXTRA_FILE = "ibtpo.json"
CHECKPOINT_MARKERS = ("config.json", EXTRA_FILE)  # files that show a directory is a checkpoint
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

PRESETS: dict[str, dict] = {
    # ~0.4M parameters: the model of the unit tests.
    "tiny-test": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4),
    # ~1M parameters.
    "mini": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=4),
    # ~3M parameters: the default policy of the built-in arithmetic task.
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

    A checkpoint is a local directory (or a model already in the local HF cache) loaded with
    `AutoModelForCausalLM` / `AutoTokenizer`, local files only, running code shipped with it only
    when `trust_remote_code`. A tokenizer without a pad token gets its EOS token as pad.
    """
    torch_dtype, dev = resolve_dtype(dtype), resolve_device(device)
    if path_or_preset in PRESETS:
        tokenizer = build_tokenizer()
        model = build_model(path_or_preset, tokenizer, seed=seed)
    else:
        model, tokenizer = load_pretrained(path_or_preset, torch_dtype, trust_remote_code)
    return model.to(device=dev, dtype=torch_dtype), tokenizer


def load_pretrained(path: str, dtype: torch.dtype, trust_remote_code: bool = False) -> tuple:
    """Load a Hugging Face checkpoint from local files; ValueError naming `path`, the part that
    failed (tokenizer or model) and what was expected."""
    expected = (f"expected a preset ({', '.join(PRESETS)}) or a Hugging Face checkpoint "
                "directory")
    kwargs = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    except Exception as err:  # tokenizers raises plain Exceptions for a damaged tokenizer.json
        raise ValueError(f"cannot load the tokenizer of {path!r} (tokenizer.json, "
                         f"tokenizer_config.json): {_reason(err)}; {expected}") from None
    try:
        with quiet_hf_progress():
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    except Exception as err:  # safetensors, torch and transformers each raise their own types
        raise ValueError(f"cannot load the model of {path!r} (config.json, model.safetensors): "
                         f"{_reason(err)}; {expected}") from None
    check_vocab(model, tokenizer, path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _reason(err: Exception) -> str:
    text = " ".join(str(err).split())
    if "trust_remote_code" in text:
        return ("it ships its own Python code, which runs only with model.trust_remote_code=true "
                "(set it only for checkpoints you trust)")
    return f"{type(err).__name__}: {text[:400]}"


def read_extra(path: str | Path) -> dict:
    """The `ibtpo.json` of a checkpoint directory ({} when it has none); ValueError naming the
    file when it is not a JSON object."""
    file = Path(path) / EXTRA_FILE
    if not file.is_file():
        return {}
    try:
        extra = json.loads(file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file}: not valid JSON ({err}); expected ibtpo's checkpoint notes") \
            from None
    if not isinstance(extra, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(extra).__name__}")
    return extra


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
