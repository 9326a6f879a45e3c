"""Export: a plain HF checkpoint that transformers loads with the policy's logits."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ibtpo.cli import main
from ibtpo.export import run_export
from ibtpo.models import load_model


def test_export_reloads_with_identical_logits_and_the_chat_template(chat_checkpoint, tmp_path):
    out = run_export(str(chat_checkpoint), str(tmp_path / "export"))
    model, _ = load_model(str(chat_checkpoint))
    plain = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, model(ids).logits)
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    assert plain.generation_config.eos_token_id == [2, 0]


def test_export_cli(chat_checkpoint, tmp_path, capsys):
    assert main(["export", "--model", str(chat_checkpoint), "--out", str(tmp_path / "e")]) == 0
    assert "plain Hugging Face checkpoint" in capsys.readouterr().out
    assert main(["export", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "f")]) == 2
    assert "none': no such file or directory" in capsys.readouterr().err


def test_a_gguf_file_loads_through_transformers_and_exports(gguf_checkpoint, chat_checkpoint,
                                                           tmp_path):
    model, tok = load_model(str(gguf_checkpoint))
    source, source_tok = load_model(str(chat_checkpoint))
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    with torch.no_grad():  # f32 tensors: the dequantized model is the source model
        torch.testing.assert_close(model(ids).logits, source(ids).logits, atol=1e-6, rtol=0)
    text = "<|im_start|>user\n12+7=?<|im_end|>\n"
    assert tok(text)["input_ids"] == source_tok(text, add_special_tokens=False)["input_ids"]
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    assert model.hf_quantizer is None  # the GGUF marker is dropped: save_pretrained works
    out = run_export(str(gguf_checkpoint), str(tmp_path / "from-gguf"))
    plain = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert "quantization_config" not in plain.config.to_dict()
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, model(ids).logits)


def test_export_takes_a_run_directory_to_its_newest_checkpoint(chat_checkpoint, tmp_path, capsys):
    import shutil

    from ibtpo.training.checkpoint import write_checkpoint

    run = tmp_path / "run"  # as `ibtpo train` leaves it: checkpoints/step-N and `latest`
    for step in (1, 2):
        write_checkpoint(run, step, lambda d: shutil.copytree(chat_checkpoint, d,
                                                              dirs_exist_ok=True), keep=3)
    for given in (run, run / "checkpoints"):
        assert main(["export", "--model", str(given), "--out", str(tmp_path / "e")]) == 0
        assert f"{run / 'checkpoints' / 'step-00000002'} ->" in capsys.readouterr().out
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "e", local_files_only=True)
    assert plain.config.hidden_size == 64
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    assert main(["export", "--model", str(empty), "--out", str(tmp_path / "f")]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err


def test_eval_and_score_take_a_run_directory_too(chat_checkpoint, tmp_path, monkeypatch):
    """`ibtpo eval` and `ibtpo score` read --model as `ibtpo export` does: a run directory means
    its newest checkpoint (the functions that would load it are replaced by recorders)."""
    import shutil

    from ibtpo.training.checkpoint import write_checkpoint

    run = tmp_path / "run"
    for step in (1, 2):
        write_checkpoint(run, step, lambda d: shutil.copytree(chat_checkpoint, d,
                                                              dirs_exist_ok=True), keep=3)
    seen = []
    monkeypatch.setattr("ibtpo.evaluation.run_eval", lambda cfg, model, out: seen.append(model))
    monkeypatch.setattr("ibtpo.diagnostics.run_score",
                        lambda cfg, model, **kw: seen.append(model) or {})
    assert main(["eval", "--model", str(run)]) == 0
    assert main(["score", "--model", str(run / "checkpoints")]) == 0
    assert seen == [str(run / "checkpoints" / "step-00000002")] * 2


def test_the_exported_tokenizer_adds_bos_as_ibtpo_trains(chat_checkpoint, tmp_path):
    """ibtpo trains on BOS + text: transformers' `tokenizer(text)` of the export gives those ids
    (the character tokenizer has a BOS it never added itself); a tokenizer without BOS (the
    chat model's) keeps its ids; the policy's own tokenizer is left as it was."""
    from ibtpo.models import encode_prompt

    model, tok = load_model("nano")
    text = "3+5-2=?"
    plain = tok(text, add_special_tokens=False)["input_ids"]
    assert tok(text)["input_ids"] == plain  # the character tokenizer adds nothing itself
    out = run_export("nano", str(tmp_path / "nano"))
    exported = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert exported(text)["input_ids"] == [tok.bos_token_id] + plain == encode_prompt(tok, text)
    assert exported.decode(exported(text)["input_ids"], skip_special_tokens=True) == text
    _, reloaded = load_model(str(out))
    assert encode_prompt(reloaded, text) == [tok.bos_token_id] + plain  # BOS once, in ibtpo too
    from ibtpo.export import export_model

    export_model(model, tok, tmp_path / "again")
    assert tok(text)["input_ids"] == plain  # the caller's tokenizer is unchanged
    chat = run_export(str(chat_checkpoint), str(tmp_path / "chat"))
    _, chat_tok = load_model(str(chat_checkpoint))
    assert AutoTokenizer.from_pretrained(chat, local_files_only=True)(text)["input_ids"] == \
        chat_tok(text)["input_ids"] == encode_prompt(chat_tok, text)
