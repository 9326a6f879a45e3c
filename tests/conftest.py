"""Shared fixtures: the character tokenizer and tiny-test models (built in code, no downloads)."""

from __future__ import annotations

import pytest

from ibtpo.models import build_model, build_tokenizer


@pytest.fixture(scope="session")
def char_tokenizer():
    """The built-in character tokenizer (shared: do not mutate)."""
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(char_tokenizer):
    """A seeded tiny-test model in eval mode (shared: do not train it; use `make_tiny_model`)."""
    return build_model("tiny-test", char_tokenizer, seed=0).eval()


@pytest.fixture
def make_tiny_model(char_tokenizer):
    """Factory of fresh tiny-test models: `make_tiny_model(seed=0)`."""
    return lambda seed=0: build_model("tiny-test", char_tokenizer, seed=seed)


@pytest.fixture(scope="session")
def warm_checkpoint(tmp_path_factory):
    """A tiny-test checkpoint warmed up on 2-term problems with operands <= 9: it solves some of
    them but not all, so RL has room to improve it (used by the trainer and compare tests).

    Measured: held-out greedy accuracy 0.33 on the 30 held-out problems after 100 steps (~5 s);
    held-out 2-term problems never occur in training, so accuracy there needs generalisation."""
    from ibtpo.config import load_config
    from ibtpo.training.sft import run_sft

    out = tmp_path_factory.mktemp("warm") / "sft"
    cfg = load_config(overrides=[
        "model.name_or_path=tiny-test", "task.terms=[2]", "task.max_operand=9",
        "task.eval_size=30",  # the space holds 126 distinct problems: keep most for training
        "sampling.max_new_tokens=24", "sft.steps=100", "sft.lr=3e-3", "sft.warmup_steps=10",
        "sft.eval_every=0", "sft.eval_size=30", "sft.max_minutes=0", f"sft.out_dir={out}",
        "eval.size=30", "eval.k=1"])
    run_sft(cfg, progress=False)
    return out
