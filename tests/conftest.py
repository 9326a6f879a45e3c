"""Shared fixtures: the character tokenizer and nano models (built in code, no downloads)."""

from __future__ import annotations

import os

import pytest

from ibtpo import kernels

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # as `make test`: a plain `pytest` never goes online
kernels.pin("portable")  # before torch runs anything: every x86-64 machine computes the same bits

from ibtpo.models import build_model, build_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def char_tokenizer():
    """The built-in character tokenizer (shared: do not mutate)."""
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(char_tokenizer):
    """A seeded nano model in eval mode (shared: do not train it; use `make_tiny_model`)."""
    return build_model("nano", char_tokenizer, seed=0).eval()


@pytest.fixture
def make_tiny_model(char_tokenizer):
    """Factory of fresh nano models: `make_tiny_model(seed=0)`."""
    return lambda seed=0: build_model("nano", char_tokenizer, seed=seed)


@pytest.fixture(scope="session")
def warm_checkpoint(tmp_path_factory):
    """A nano checkpoint warmed up on 2-term problems with operands <= 9: it solves some of
    them but not all, so RL has room to improve it (used by the trainer and compare tests).

    Measured: held-out greedy accuracy 0.33 on the 30 held-out problems after 100 steps (~5 s);
    held-out 2-term problems never occur in training, so accuracy there needs generalisation."""
    from ibtpo.config import load_config
    from ibtpo.training.sft import run_sft

    out = tmp_path_factory.mktemp("warm") / "sft"
    cfg = load_config(overrides=[
        "model.name_or_path=nano", "task.terms=[2]", "task.max_operand=9",
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


def _permute_for_gguf(w, n_head: int):
    """llama.cpp's row order of q / k projections (convert_hf_to_gguf's `permute`); transformers
    reverses it when it loads a llama GGUF."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
        w.shape)


def write_gguf(model, tokenizer, path) -> None:
    """A llama GGUF file (f32 tensors, gpt2-style BPE tokenizer, chat template), as llama.cpp's
    converter writes one; written in code so that the GGUF path is tested offline."""
    import json

    import gguf

    c, sd = model.config, {k: v.float().numpy() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = sorted(spec["model"]["vocab"], key=spec["model"]["vocab"].get)
    specials = {t["content"] for t in spec["added_tokens"]}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(vocab)
    w.add_token_types([gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL
                       for t in vocab])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    w.add_eos_token_id(tokenizer.eos_token_id)
    w.add_pad_token_id(tokenizer.pad_token_id)
    w.add_chat_template(tokenizer.chat_template)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    names = {"attn_norm": "input_layernorm", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    for i in range(c.num_hidden_layers):
        hf = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_q.weight", _permute_for_gguf(
            sd[hf + "self_attn.q_proj.weight"], c.num_attention_heads))
        w.add_tensor(f"blk.{i}.attn_k.weight", _permute_for_gguf(
            sd[hf + "self_attn.k_proj.weight"], c.num_key_value_heads))
        for g, h in names.items():
            w.add_tensor(f"blk.{i}.{g}.weight", sd[hf + h + ".weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="session")
def gguf_checkpoint(chat_checkpoint, tmp_path_factory):
    """The chat checkpoint's model and tokenizer as a .gguf file (needs the gguf package)."""
    pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(chat_checkpoint, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(chat_checkpoint, local_files_only=True)
    path = tmp_path_factory.mktemp("gguf") / "tiny-chat.f32.gguf"
    write_gguf(model, tokenizer, path)
    return path
