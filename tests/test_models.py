"""Tokenizer, presets, checkpoints (atomic save), encode_prompt."""

from __future__ import annotations

import json
import re
import string

import pytest
import torch
from tokenizers import processors
from transformers import AutoModelForCausalLM, AutoTokenizer

from ibtpo import models
from ibtpo.models import (
    PRESETS,
    build_model,
    build_tokenizer,
    count_parameters,
    encode_prompt,
    load_model,
    looks_local,
    read_extra,
    save_checkpoint,
)

TEXT = "23+45-12=?\n23+45=68\n\n68-12=56\n\nanswer: 56\t<eos>" + string.printable


def test_tokenizer_round_trips_any_printable_ascii(char_tokenizer):
    ids = char_tokenizer.encode(TEXT)
    assert len(ids) == len(TEXT)  # one token per character, no special tokens added
    assert char_tokenizer.decode(ids) == TEXT


def test_tokenizer_specials_and_unknown_chars(char_tokenizer):
    tok = char_tokenizer
    specials = [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id]
    assert specials == [0, 1, 2, 3]
    assert tok.encode("a€b") == [tok.encode("a")[0], tok.unk_token_id, tok.encode("b")[0]]
    assert tok.decode(tok.encode("<eos>")) == "<eos>"  # special-token text stays characters
    assert tok.decode([1, *tok.encode("hi"), 2], skip_special_tokens=True) == "hi"


def test_tokenizer_save_and_reload(char_tokenizer, tmp_path):
    char_tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert loaded.encode(TEXT) == char_tokenizer.encode(TEXT)
    assert loaded.decode(loaded.encode(TEXT)) == TEXT
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (1, 2, 0)


def test_encode_prompt_adds_bos_once_and_no_eos(char_tokenizer):
    ids = encode_prompt(char_tokenizer, "1+2=?\n")
    assert ids[0] == char_tokenizer.bos_token_id and len(ids) == 7
    assert char_tokenizer.eos_token_id not in ids


def test_encode_prompt_with_a_tokenizer_that_adds_bos_and_eos_itself():
    a, b = build_tokenizer().encode("ab")
    tok = build_tokenizer()
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 1), ("<eos>", 2)])
    assert tok("ab")["input_ids"] == [1, a, b, 2]
    assert encode_prompt(tok, "ab") == [1, a, b]


def test_presets_have_the_advertised_sizes(char_tokenizer):
    sizes = {name: count_parameters(build_model(name, char_tokenizer)) for name in PRESETS}
    assert 0.25e6 < sizes["nano"] < 0.5e6
    assert 2.5e6 < sizes["tiny"] < 4e6


def test_build_model_is_seeded_and_leaves_the_global_rng_alone(char_tokenizer):
    state = torch.random.get_rng_state()
    a, b = build_model("nano", char_tokenizer, 1), build_model("nano", char_tokenizer, 1)
    c = build_model("nano", char_tokenizer, 2)
    assert torch.equal(torch.random.get_rng_state(), state)
    wa, wb, wc = (m.model.embed_tokens.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_unknown_preset_or_path_lists_the_presets(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"expected a preset \(nano, .*tiny\)"):
        load_model(str(tmp_path / "nowhere"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=r"'runs/sft': no such file or directory \(and, offline"):
        load_model("runs/sft")  # a relative path that would otherwise be tried as a hub name
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model("nano", dtype="float8")


def test_a_missing_local_path_fails_at_once_online_too(tmp_path, monkeypatch):
    # online, models/SmolLM2-135M-Instruct before `make smollm2` cost 55 s of hub retries
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained",
                        lambda *a, **k: pytest.fail("a local path was tried on the hub"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for path in ("./models/SmolLM2-135M-Instruct", "models/SmolLM2-135M-Instruct",
                 str(tmp_path / "nowhere"), "a/b/c", "~/ckpt"):
        with pytest.raises(ValueError, match=rf"'{re.escape(path)}': no such file or directory "
                                             r"\(.*a local path, not a hub name"):
            load_model(path)
    with pytest.raises(ValueError, match=r"make smollm2 puts SmolLM2-135M-Instruct there"):
        load_model("./models/SmolLM2-135M-Instruct")
    assert not looks_local("HuggingFaceTB/SmolLM2-135M-Instruct")  # a hub name: tried online
    (tmp_path / "models").rmdir()  # before `make smollm2` there is no models/ at all
    assert looks_local("models/SmolLM2-135M-Instruct") and looks_local("runs/sft")


def test_checkpoint_round_trip(tiny_model, char_tokenizer, tmp_path):
    out = tmp_path / "ckpt"
    save_checkpoint(tiny_model, char_tokenizer, out, extra={"task": {"max_operand": 9}})
    assert read_extra(out) == {"task": {"max_operand": 9}}
    model, tok = load_model(str(out))
    ids = torch.tensor([encode_prompt(tok, "1+2=?\n")])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, tiny_model(ids).logits, atol=1e-6)
    assert isinstance(AutoModelForCausalLM.from_pretrained(out), type(tiny_model))
    assert (out / "model.safetensors").is_file()


def test_failed_save_leaves_the_previous_checkpoint_intact(tiny_model, char_tokenizer,
                                                           tmp_path, monkeypatch):
    out = tmp_path / "ckpt"
    save_checkpoint(tiny_model, char_tokenizer, out, extra={"version": 1})
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def fail_midway(*args, **kwargs):  # the model is written, then the tokenizer save fails
        raise OSError("disk full")

    monkeypatch.setattr(type(char_tokenizer), "save_pretrained", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tiny_model, char_tokenizer, out, extra={"version": 2})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp dir left behind
    monkeypatch.undo()
    save_checkpoint(tiny_model, char_tokenizer, out, extra={"version": 2})
    assert read_extra(out) == {"version": 2} and [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_save_refuses_to_replace_a_directory_that_is_not_a_checkpoint(tiny_model, char_tokenizer,
                                                                      tmp_path):
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match="refusing to replace"):
        save_checkpoint(tiny_model, char_tokenizer, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "precious"


def test_save_copies_extra_files_from_the_target(tiny_model, char_tokenizer, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl").write_text(json.dumps({"step": 1}) + "\n")
    save_checkpoint(tiny_model, char_tokenizer, out, files=[out / "log.jsonl"])
    assert (out / "log.jsonl").read_text() == '{"step": 1}\n' and (out / "config.json").is_file()


def test_attention_implementation_is_the_measured_one(tiny_model):
    assert tiny_model.config._attn_implementation == models.ATTN_IMPLEMENTATION


def test_a_saved_bpe_chat_model_loads_by_path_with_its_stop_ids(chat_checkpoint):
    model, tok = load_model(str(chat_checkpoint))
    im_end, eot = tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert (im_end, eot) == (2, 0) and tok.eos_token_id == im_end and tok.pad_token_id == eot
    assert models.stop_token_ids(tok, model) == [0, 2]  # generation_config adds <|endoftext|>
    assert models.stop_token_ids(build_tokenizer()) == [2]  # char tokenizer: its <eos> alone


def test_chat_template_is_applied_to_prompts(chat_checkpoint):
    _, tok = load_model(str(chat_checkpoint))
    plain = models.prompt_encoder(tok)("1+2=?")
    assert plain == tok("1+2=?", add_special_tokens=False)["input_ids"]  # no BOS to add
    chat = models.prompt_encoder(tok, chat_template=True)("1+2=?")
    want = "<|im_start|>user\n1+2=?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(chat) == want and chat[0] == tok.convert_tokens_to_ids("<|im_start|>")
    system = models.prompt_encoder(tok, chat_template=True, system_prompt="Be brief.")("1+2=?")
    assert tok.decode(system) == "<|im_start|>system\nBe brief.<|im_end|>\n" + want
    with pytest.raises(ValueError, match="tokenizer has no chat template"):
        models.prompt_encoder(build_tokenizer(), chat_template=True)
