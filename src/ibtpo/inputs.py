"""Checks of what a user hands the CLI, where it meets the model: text files, vocabulary, context.

Each check raises one ValueError naming the file (or field) and what was expected; the CLI turns it
into a message and exit status 2. Called before anything is written.
- `check_utf8_lines(path)`: a text data file is UTF-8 (the first bad line is named; a binary file
  fails on its first line).
- `check_vocab(model, tokenizer, where)`: every token id of the tokenizer (its vocabulary and its
  special tokens) has a row in the model's input embedding.
- `context_length(model)`: the model's context in tokens, from its config (None when the config
  declares none); `check_prompt_lengths(...)`: prompt tokens + `sampling.max_new_tokens` fit it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length",
                "seq_length")


def check_utf8_lines(path: str | Path) -> None:
    """ValueError naming `path` and the line of its first byte sequence that is not UTF-8."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[err.start]:02x} at "
                                 f"column {err.start + 1}); expected a UTF-8 text file of JSON "
                                 "lines") from None


def check_vocab(model, tokenizer, where: str) -> None:
    """ValueError when a token id of `tokenizer` has no row in the model's embedding."""
    rows = model.get_input_embeddings().num_embeddings
    ids = {"vocabulary": len(tokenizer) - 1}
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        if isinstance(getattr(tokenizer, name, None), int):
            ids[name] = getattr(tokenizer, name)
    bad = {k: v for k, v in ids.items() if v >= rows}
    if bad:
        what = ", ".join(f"{k} {v}" for k, v in bad.items())
        raise ValueError(f"{where}: the tokenizer does not fit the model: its largest token ids "
                         f"({what}) exceed the model's {rows} embedding rows (config.json "
                         "vocab_size); expected the tokenizer the model was trained with")


def context_length(model) -> int | None:
    """The context of `model` in tokens (first of CONTEXT_KEYS its config sets), or None."""
    config = getattr(model, "config", None)
    for key in CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_prompt_lengths(problems, encode: Callable[[str], list], model, max_new_tokens: int,
                         source: str) -> None:
    """ValueError naming `source` and the first prompt whose tokens plus `max_new_tokens` do not
    fit the model's context."""
    context = context_length(model)
    if context is None:
        return
    for i, problem in enumerate(problems):
        n = len(encode(problem.prompt))
        if n + max_new_tokens > context:
            raise ValueError(
                f"{source}: prompt {i} ({problem.prompt[:60]!r}...) is {n} tokens; with "
                f"sampling.max_new_tokens={max_new_tokens} it exceeds the model's context of "
                f"{context} tokens; expected prompts of at most {context - max_new_tokens} tokens "
                "(shorten them or lower sampling.max_new_tokens)")
