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


CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
CHAT_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2


def build_bpe_chat_tokenizer():
    """A byte-level BPE tokenizer trained in code on arithmetic text, with a ChatML template:
    EOS = <|im_end|> (end of turn), pad = <|endoftext|>, no BOS (as Qwen / SmolLM2 chat models)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    corpus = [f"{a}+{b}={a + b}\n\nThe answer is {a + b}." for a in range(30) for b in range(30)]
    core.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=320, special_tokens=CHAT_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", chat_template=CHATML)


@pytest.fixture(scope="session")
def chat_checkpoint(tmp_path_factory):
    """A saved tiny Llama with the BPE chat tokenizer: what a user's instruct model looks like.

    config.eos_token_id = <|im_end|>; generation_config.eos_token_id = [<|im_end|>,
    <|endoftext|>] (two stop ids, as Qwen2.5-Instruct declares)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = build_bpe_chat_tokenizer()
    im_end, eot = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, eos_token_id=im_end, pad_token_id=eot,
                         bos_token_id=None, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=[im_end, eot], pad_token_id=eot)
    out = tmp_path_factory.mktemp("chat") / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
