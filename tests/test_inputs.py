"""Bad input at the CLI: configs and overrides, data files, model and checkpoint directories, long
prompts, empty data. Each gives one message naming the file or field, exit status 2, no
traceback, and leaves what was already written unchanged."""

import importlib.util
import io
import json
import shutil

import pytest
import torch

from ibtpo.cli import main
from ibtpo.inputs import check_prompt_lengths, check_utf8_lines, check_vocab, context_length
from ibtpo.models import build_model, build_tokenizer, save_checkpoint
from ibtpo.training.checkpoint import latest_checkpoint

SMALL = ["task.terms=[2]", "task.max_operand=9", "task.eval_size=30", "eval.size=2", "eval.k=1",
         "sampling.max_new_tokens=8", "train.tensorboard=false", "train.steps=1",
         "train.prompts_per_step=2", "model.device=cpu"]


def train_args(out, *sets, config="grpo"):
    return ["train", "--config", config, "--no-progress"] + [
        x for s in SMALL + [f"train.out_dir={out}", *sets] for x in ("--set", s)]


def tree(path) -> list:
    """Every file below `path` with its bytes (to show nothing was written or changed)."""
    if not path.exists():
        return []
    return sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else b"")
                  for p in path.rglob("*"))


def fails_cleanly(capsys, args, *expected, out=None) -> str:
    """Run the CLI; assert exit 2, one message with every `expected` text, no traceback, and an
    unchanged `out` directory."""
    before = tree(out) if out is not None else None
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("ibtpo "), err
    for text in expected:
        assert text in err, (text, err)
    if out is not None:
        assert tree(out) == before
    return err


@pytest.fixture
def model_dir(tmp_path):
    """A fresh nano checkpoint directory that a test may damage."""
    tok = build_tokenizer()
    out = tmp_path / "model"
    save_checkpoint(build_model("nano", tok), tok, out)
    return out


# --- config files and overrides ------------------------------------------------------------------
def test_bad_config_files_and_overrides(tmp_path, capsys):
    out = tmp_path / "run"
    fails_cleanly(capsys, ["train", "--config", str(tmp_path / "none.yaml")], "none.yaml",
                  "no such file")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  lr: [1,\n")
    fails_cleanly(capsys, ["train", "--config", str(broken)], "broken.yaml:", "not valid YAML")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    fails_cleanly(capsys, ["train", "--config", str(binary)], "binary.yaml", "not UTF-8")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("train:\n  learning_rate: 0.1\n")
    fails_cleanly(capsys, ["train", "--config", str(unknown)], "'train.learning_rate'")
    fails_cleanly(capsys, train_args(out, "train.lr=fast"), "train.lr", out=out)
    fails_cleanly(capsys, train_args(out, "train.steps=-3"), "train.steps", ">= 1", out=out)
    fails_cleanly(capsys, ["train", "--set", "steps"], "expected section.key=value")
    assert not out.exists()


# --- data files ----------------------------------------------------------------------------------
def write_rows(path, n=40, prompt="{i}+1=?\n"):
    path.write_text("".join(json.dumps({"prompt": prompt.format(i=i), "answer": str(i + 1)}) + "\n"
                            for i in range(n)))
    return path


@pytest.mark.parametrize("name, content, expected", [
    ("latin1.jsonl", lambda p: p.write_bytes(write_rows(p).read_bytes() + "é".encode("latin-1")),
     [":41: not UTF-8"]),
    ("binary.jsonl", lambda p: p.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4),
     [":1: not UTF-8"]),
    ("badjson.jsonl", lambda p: p.write_text('{"prompt": "1+1=?\\n", "answer": 2}\n{oops\n'),
     [":2: not valid JSON"]),
    ("nofield.jsonl", lambda p: p.write_text('{"question": "1+1=?", "answer": 2}\n'),
     [":1: field 'prompt' is missing"]),
    ("empty.jsonl", lambda p: p.write_text("\n\n"), ["no rows"]),
    ("data.csv", lambda p: p.write_text("prompt,answer\n"), ["expected 'arithmetic'"]),
])
def test_bad_data_files(tmp_path, capsys, name, content, expected):
    path = tmp_path / name
    content(path)
    out = tmp_path / "run"
    fails_cleanly(capsys, train_args(out, f"task.name={path}", "task.eval_size=4",
                                     "model.name_or_path=nano", "train.init=nano"),
                  name, *expected, out=out)
    assert not out.exists()


def test_missing_data_file_and_packages(tmp_path, capsys):
    out = tmp_path / "run"
    base = train_args(out, "train.init=nano")
    fails_cleanly(capsys, base + ["--set", f"task.name={tmp_path / 'nope.jsonl'}"], "no such file")
    if importlib.util.find_spec("pyarrow") is None:
        parquet = tmp_path / "rows.parquet"
        parquet.write_bytes(b"PAR1")
        fails_cleanly(capsys, base + ["--set", f"task.name={parquet}"], "rows.parquet",
                      "needs pyarrow")
    if importlib.util.find_spec("datasets") is None:
        fails_cleanly(capsys, base + ["--set", "task.name=hf:gsm8k"], "hf:gsm8k",
                      "needs the datasets package")
    assert not out.exists()


def test_prompts_longer_than_the_context(tmp_path, capsys):
    """nano has a context of 256 tokens (one per character, plus BOS)."""
    data = write_rows(tmp_path / "long.jsonl", prompt="{i}" + "+1" * 130 + "=?\n")  # > 262 chars
    out = tmp_path / "run"
    fails_cleanly(capsys, train_args(out, f"task.name={data}", "task.eval_size=4",
                                     "train.init=nano"),
                  f"task.name='{data}'", "exceeds the model's context of 256 tokens", out=out)
    fails_cleanly(capsys, ["eval", "--model", "nano", "--set", f"task.name={data}",
                           "--set", "task.eval_size=4", "--set", "eval.size=4"],
                  "(held-out)", "exceeds the model's context")
    assert not out.exists()


# --- model and checkpoint directories ------------------------------------------------------------
def damage_weights(d):
    (d / "model.safetensors").write_bytes(b"\x00garbage" * 16)


def truncate_weights(d):
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[:len(data) // 2])


def small_vocab(d):
    """A model with 50 embedding rows saved with the 104-token character tokenizer."""
    tok = build_tokenizer()
    model = build_model("nano", tok)
    model.resize_token_embeddings(50)
    shutil.rmtree(d)
    save_checkpoint(model, tok, d)


@pytest.mark.parametrize("damage, expected", [
    (damage_weights, ["cannot load the model of", "model.safetensors", "SafetensorError"]),
    (truncate_weights, ["cannot load the model of", "SafetensorError"]),
    (lambda d: (d / "model.safetensors").unlink(), ["cannot load the model of", "no file named"]),
    (lambda d: (d / "config.json").write_text("{not json"), ["config.json", "not a valid JSON"]),
    (lambda d: (d / "tokenizer.json").write_text('{"version": '),
     ["cannot load the tokenizer of", "tokenizer.json"]),
    (lambda d: [(d / f).unlink() for f in ("tokenizer.json", "tokenizer_config.json")],
     ["cannot load the tokenizer of"]),
    (small_vocab, ["the tokenizer does not fit the model", "50 embedding rows"]),
    (lambda d: shutil.rmtree(d), ["no such file or directory"]),
])
def test_bad_model_directories(model_dir, tmp_path, capsys, damage, expected):
    damage(model_dir)
    out = tmp_path / "run"
    fails_cleanly(capsys, train_args(out, f"train.init={model_dir}"), str(model_dir), *expected,
                  out=out)
    fails_cleanly(capsys, ["eval", "--model", str(model_dir)], str(model_dir), *expected)
    assert not out.exists()


def test_corrupt_checkpoint_notes_are_named(model_dir, capsys):
    (model_dir / "ibtpo.json").write_bytes(b"\xff{")
    fails_cleanly(capsys, ["eval", "--model", str(model_dir)], "ibtpo.json", "not valid JSON")


def test_code_shipped_with_a_checkpoint_never_runs_unless_trusted(model_dir, tmp_path, capsys):
    marker = tmp_path / "ran"
    (model_dir / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class EvilConfig(LlamaConfig):\n    model_type = 'evil'\n"
        "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n")
    config = json.loads((model_dir / "config.json").read_text())
    config.update(model_type="evil", auto_map={"AutoConfig": "evil.EvilConfig",
                                               "AutoModelForCausalLM": "evil.EvilModel"})
    (model_dir / "config.json").write_text(json.dumps(config))
    out = tmp_path / "run"
    fails_cleanly(capsys, train_args(out, f"train.init={model_dir}"), str(model_dir),
                  "model.trust_remote_code=true", out=out)
    assert not marker.exists()
    trusted = ["eval", "--model", str(model_dir), "--set", "model.trust_remote_code=true", "--set",
               "eval.size=2", "--set", "eval.k=1", "--set", "sampling.max_new_tokens=4"]
    assert main(trusted) == 0 and marker.exists()  # the config said so: the code ran


def test_bad_checkpoints_on_resume(warm_checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    args = train_args(out, f"train.init={warm_checkpoint}")
    assert main(args) == 0
    resume = args[:1] + ["--resume"] + args[1:]
    latest = latest_checkpoint(out)
    state = latest / "trainer_state.pt"
    good = state.read_bytes()
    state.write_bytes(good[: len(good) // 3])
    fails_cleanly(capsys, resume, str(state), "corrupt or truncated", out=out)
    state.unlink()
    fails_cleanly(capsys, resume, str(state), "missing", out=out)
    raw = torch.load(io.BytesIO(good), weights_only=True)
    torch.save({**raw, "world_size": 2}, state)
    fails_cleanly(capsys, resume, "written by 2 process(es)", out=out)
    state.write_bytes(good)
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    fails_cleanly(capsys, resume, "cannot load the checkpoint's model", out=out)
    fails_cleanly(capsys, args, "holds the checkpoints of an earlier run", "--resume", out=out)


# --- the checks themselves ----------------------------------------------------------------------
def test_checks_on_hand_built_inputs(tmp_path, tiny_model, char_tokenizer):
    text = tmp_path / "t.jsonl"
    text.write_bytes(b'{"a": 1}\n{"b": "\xc3\xa9"}\n{"c": "\xe9"}\n')  # line 2 is UTF-8 "é"
    with pytest.raises(ValueError, match=r"t.jsonl:3: not UTF-8 text \(byte 0xe9 at column 8\)"):
        check_utf8_lines(text)
    assert context_length(tiny_model) == 256
    check_vocab(tiny_model, char_tokenizer, "m")  # 104 tokens, 104 rows: fits

    class P:
        prompt = "x" * 200

    encode = char_tokenizer.encode  # 1 token per character here
    check_prompt_lengths([P()], encode, tiny_model, 56, "s")  # 200 + 56 = 256 fits exactly
    with pytest.raises(ValueError, match="s: prompt 0 .* is 200 tokens"):
        check_prompt_lengths([P()], encode, tiny_model, 57, "s")
