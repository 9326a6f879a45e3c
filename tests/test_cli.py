"""The `ibtpo` command: --version, --help, --debug, the first `ibtpo train`, the end-of-run line,
per-step lines, rewards out of range."""

from __future__ import annotations

import re

import pytest

from ibtpo import __version__
from ibtpo.cli import main
from ibtpo.config import builtin_config_names

TINY = ["task.terms=[2]", "task.max_operand=9", "task.eval_size=4", "eval.size=4", "eval.k=1",
        "sampling.max_new_tokens=16", "train.tensorboard=false", "train.prompts_per_step=2",
        "rollout.b0=2", "train.eval_every=0"]


def sets(values: list[str]) -> list[str]:
    return [arg for v in values for arg in ("--set", v)]


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"ibtpo {__version__}"


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"]])
def test_help_is_plain_text_and_names_the_builtin_configs(argv, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "``" not in text and ":func:" not in text
    assert "grpo" in text and "ibtpo_adv_indep" in text and "--debug" in text


def test_debug_flag_and_env_show_the_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("IBTPO_DEBUG", raising=False)
    argv = ["export", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    plain = capsys.readouterr().err
    assert "Traceback" not in plain and len(plain.strip().splitlines()) == 1
    for debug_argv in (["--debug", *argv], [argv[0], "--debug", *argv[1:]]):
        assert main(debug_argv) == 2
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err
        assert err.strip().splitlines()[-1] == plain.strip()  # the same message, last
    monkeypatch.setenv("IBTPO_DEBUG", "1")
    assert main(argv) == 2 and "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("IBTPO_DEBUG", "0")
    assert main(argv) == 2 and "Traceback" not in capsys.readouterr().err


def test_first_train_in_an_empty_folder_says_ibtpo_sft_makes_the_init(tmp_path, monkeypatch,
                                                                       capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "train.init='runs/sft'" in err and "run `ibtpo sft` first" in err
    assert "Traceback" not in err


def test_a_reward_out_of_range_stops_train_at_its_first_scoring(tmp_path, capsys):
    (tmp_path / "trl_rewards.py").write_text(
        "def format_penalty(prompts, completions, **kw):\n"
        "    return [-1.0 for _ in completions]\n")
    reward = f"task.reward={tmp_path / 'trl_rewards.py'}:format_penalty"
    code = main(["train", "--no-progress", *sets(TINY + [
        "train.init=nano", f"train.out_dir={tmp_path / 'run'}", reward, "train.steps=1"])])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "reward 'format_penalty' returned -1.0" in err and "task.reward_transform" in err
    assert "Traceback" not in err
    # nothing written but the run folder's lock (no empty metrics.jsonl, no tb/)
    assert [p.name for p in (tmp_path / "run").iterdir()] == [".ibtpo.lock"]
    # the stated way out: the same function, thresholded (-1 < 0.5: every trajectory fails)
    code = main(["train", "--no-progress", *sets(TINY + [
        "train.init=nano", f"train.out_dir={tmp_path / 'run2'}", reward, "train.steps=1",
        "task.reward_transform=threshold"])])
    assert code == 0, capsys.readouterr().err
    assert {"metrics.jsonl", "checkpoints"} <= {p.name for p in (tmp_path / "run2").iterdir()}


def test_a_finished_run_prints_one_summary_line_and_per_step_lines(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--config", "grpo", "--no-progress", *sets(TINY + [
        "train.init=nano", f"train.out_dir={out}", "train.steps=2"])])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    (summary,) = [line for line in captured.out.splitlines() if line.startswith("ibtpo train:")]
    assert re.search(r"done: 2 steps, [\d,]+ generated tokens in \d+ min \d\d s; held-out "
                     r"pass@1 \d\.\d{3}, avg@k \d\.\d{3}; checkpoint .*step-00000002; metrics "
                     r".*metrics\.jsonl", summary), summary
    steps = [line for line in captured.err.splitlines() if re.match(r"[12]/2 steps ", line)]
    assert len(steps) == 2 and "reward" in steps[0], captured.err


def test_builtin_config_names_are_the_packaged_files():
    assert {"ibtpo", "grpo", "grpo_clip_higher"} <= set(builtin_config_names())


def test_demo_runs_end_to_end_and_reuses_its_warm_up(tmp_path, capsys):
    """`ibtpo demo` (what `make demo` runs) at tiny settings: warm-up, then GRPO and IB-TPO, 3 seeds
    each, the table and plots written; a second call reuses the warm-up and the finished runs."""
    tiny = ["task.terms=[2]", "task.eval_size=20", "eval.size=4", "eval.k=2",
            "sampling.max_new_tokens=16", "train.prompts_per_step=2", "rollout.b0=2",
            "rollout.rounds=2", "train.token_budget=150", "sft.steps=3", "sft.eval_every=0",
            "sft.eval_size=4", "sft.warmup_steps=1", "sft.stop_at_accuracy=0.0"]
    argv = ["demo", "--no-progress", "--out", str(tmp_path), *sets(tiny)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| grpo | 3 |" in out and "| ibtpo | 3 |" in out
    for name in ("compare.md", "compare.json", "compare.png", "sft/model.safetensors"):
        assert (tmp_path / name).is_file(), name
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert "warm-up: reusing" in again and again.count("reusing the finished run") == 6


def test_eval_score_and_resume_use_the_config_recorded_with_the_run(tmp_path, monkeypatch,
                                                                    capsys):
    """A run on 2-term sums (TINY, train.init=nano): `eval --model RUN` and `score --model RUN`
    get the run's task and eval settings, `--set` still overrides them, and `--resume` with
    only the out_dir continues the run with its own config (it used to fail on the default
    train.init='runs/sft')."""
    import json

    out = tmp_path / "run"
    assert main(["train", "--no-progress", *sets(TINY + [
        "train.init=nano", f"train.out_dir={out}", "train.steps=1"])]) == 0
    seen = []
    monkeypatch.setattr("ibtpo.evaluation.run_eval", lambda cfg, model, out: seen.append(cfg))
    monkeypatch.setattr("ibtpo.diagnostics.run_score",
                        lambda cfg, model, **kw: seen.append(cfg) or {})
    assert main(["eval", "--model", str(out)]) == 0
    assert "the config recorded with the run" in capsys.readouterr().err
    assert main(["eval", "--model", str(out), "--set", "eval.size=2"]) == 0
    assert main(["score", "--model", str(out)]) == 0
    assert [(c.task.terms, c.task.max_operand, c.eval.size) for c in seen] == [
        ([2], 9, 4), ([2], 9, 2), ([2], 9, 4)]
    capsys.readouterr()
    assert main(["train", "--no-progress", "--resume", "--set", f"train.out_dir={out}",
                 "--set", "train.steps=2"]) == 0, capsys.readouterr().err
    extra = json.loads((out / "checkpoints" / "latest" / "ibtpo.json").read_text())
    assert extra["step"] == 2 and extra["config"]["train"]["init"] == "nano"
    assert extra["config"]["rollout"]["b0"] == 2 and extra["config"]["task"]["terms"] == [2]


def test_the_stop_hint_says_resume_takes_the_run_config():
    from ibtpo.cli import resume_hint
    from ibtpo.config import load_config

    hint = resume_hint(load_config(overrides=["train.out_dir=runs/cli1"]))
    assert hint.startswith("continue with `ibtpo train --resume --set train.out_dir=runs/cli1`")
    assert "the config recorded with the run" in hint and "--set overrides" in hint
