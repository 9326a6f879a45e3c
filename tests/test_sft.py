"""Supervised warm-up: batches, schedule, a tiny run that really learns, time limit, errors."""

from __future__ import annotations

import json
import math

import pytest
from transformers import AutoModelForCausalLM

from ibtpo.config import Config, SFTConfig
from ibtpo.data import load_task
from ibtpo.data.arithmetic import make_problem
from ibtpo.data.rewards import get_reward_fn
from ibtpo.evaluation import evaluate
from ibtpo.models import build_model, build_tokenizer, read_extra
from ibtpo.training.sft import IGNORE_INDEX, collate, lr_at, run_sft


def easy_config(tmp_path, steps: int = 100) -> Config:
    """nano on 3-term sums of operands <= 5: learnable in well under a minute.

    Every step of a held-out problem ("a+b=c") also occurs in training problems, so held-out
    accuracy rises as soon as the facts and the format are learned (measured: 0.8 after 100
    steps, from 0.0)."""
    cfg = Config()
    cfg.model.name_or_path = "nano"
    cfg.task.terms, cfg.task.max_operand, cfg.task.ops, cfg.task.eval_size = [3], 5, "+", 25
    s = cfg.sft
    s.steps, s.batch_size, s.lr, s.warmup_steps = steps, 64, 3e-3, 10
    s.eval_every, s.eval_size, s.log_every, s.max_minutes = 0, 25, 1, 0.0
    s.out_dir = str(tmp_path / "sft")
    cfg.eval.size, cfg.eval.k, cfg.sampling.max_new_tokens = 25, 1, 32
    return cfg


def test_collate_trains_on_response_and_eos_only(char_tokenizer):
    problems = [make_problem([1, 2], ["+"]), make_problem([10, 20, 3], ["+", "-"])]
    batch = collate(char_tokenizer, problems, "cpu")
    short = problems[0]
    n_prompt, n_resp = 1 + len(short.prompt), len(short.solution) + 1  # BOS + prompt; + EOS
    row, labels = batch.input_ids[0], batch.labels[0]
    assert char_tokenizer.decode(row[1:n_prompt]) == short.prompt
    assert (labels[:n_prompt] == IGNORE_INDEX).all()
    assert (labels[n_prompt + n_resp:] == IGNORE_INDEX).all()
    assert char_tokenizer.decode(labels[n_prompt:n_prompt + n_resp - 1]) == short.solution
    assert labels[n_prompt + n_resp - 1] == char_tokenizer.eos_token_id
    n_long = batch.attention_mask[1].sum()
    assert batch.attention_mask[0].sum() == n_prompt + n_resp == batch.n_tokens - n_long
    assert batch.attention_mask[1].all()  # the longest row has no padding


def test_lr_schedule_warms_up_then_decays_to_ten_percent():
    cfg = SFTConfig(steps=100, warmup_steps=10, lr=1.0)
    assert lr_at(0, 0.0, cfg) == pytest.approx(0.1)  # (0 + 1) / 10
    assert lr_at(9, 0.09, cfg) == pytest.approx(1.0)
    assert lr_at(10, 0.10, cfg) == pytest.approx(1.0)  # cosine starts at the peak
    assert lr_at(55, 0.55, cfg) == pytest.approx(0.55)  # halfway: 0.1 + 0.9 * 0.5
    assert lr_at(99, 1.0, cfg) == pytest.approx(0.1)
    # time budget further along than the step count: the schedule follows time
    assert lr_at(20, 1.0, cfg) == pytest.approx(0.1)


def test_tiny_warm_up_lowers_the_loss_and_raises_held_out_accuracy(tmp_path):
    cfg = easy_config(tmp_path)
    task, reward_fn = load_task(cfg.task), get_reward_fn("arithmetic")
    tok = build_tokenizer()
    untrained = build_model("nano", tok, seed=cfg.sft.seed)
    before = evaluate(untrained, tok, task.eval_set(), reward_fn, k=0, max_new_tokens=32)
    final = run_sft(cfg, progress=False)
    losses = [h["sft/loss"] for h in final["history"]]
    assert final["steps"] == cfg.sft.steps and len(losses) == cfg.sft.steps
    assert losses[-1] < 0.5 * losses[0]
    assert final["pass@1"] > before["pass@1"] + 0.3, (before["pass@1"], final["pass@1"])
    out = tmp_path / "sft"
    assert AutoModelForCausalLM.from_pretrained(out).num_parameters() > 0
    extra = read_extra(out)
    assert extra["task"]["max_operand"] == 5 and extra["final_eval"]["pass@1"] == final["pass@1"]
    log = [json.loads(line) for line in (out / "sft_log.jsonl").read_text().splitlines()]
    assert set(log[-1]) >= {"step", "sft/loss", "sft/lr", "sft/tokens_per_s", "time/elapsed_s",
                            "sft/val_pass@1", "sft/val_pass@1/terms_3"}
    assert "sft/val_pass@1" not in log[0]  # eval_every = 0: evaluated at the last step only


def test_stop_at_accuracy_ends_the_warm_up_at_the_first_validation_that_reaches_it(tmp_path):
    cfg = easy_config(tmp_path, steps=400)
    cfg.sft.eval_every, cfg.sft.stop_at_accuracy = 10, 0.3
    final = run_sft(cfg, progress=False)
    vals = [(h["step"], h["sft/val_pass@1"]) for h in final["history"] if "sft/val_pass@1" in h]
    # measured: the 3-term sums pass 0.3 on validation after 40-60 of the 400 capped steps
    assert final["steps"] < 400 and final["steps"] == vals[-1][0]
    assert vals[-1][1] >= 0.3 and all(v < 0.3 for _, v in vals[:-1])
    assert read_extra(tmp_path / "sft")["final_eval"]["steps"] == final["steps"]


def test_max_minutes_stops_early_and_still_evaluates_and_saves(tmp_path):
    cfg = easy_config(tmp_path, steps=10_000)
    cfg.sft.max_minutes = 0.02  # 1.2 s
    cfg.eval.size = 5
    final = run_sft(cfg, progress=False)
    assert 0 < final["steps"] < 10_000 and math.isfinite(final["loss"])
    assert final["train_seconds"] < 1.2 + 10  # one step and one evaluation past the limit at most
    assert read_extra(tmp_path / "sft")["final_eval"]["steps"] == final["steps"]


def test_a_dataset_without_solutions_cannot_be_used_for_sft(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}?", "answer": i}) + "\n" for i in range(9)))
    cfg = easy_config(tmp_path)
    cfg.task.name, cfg.task.eval_size = str(data), 3
    with pytest.raises(ValueError, match="no 'solution' column"):
        run_sft(cfg, progress=False)


def test_an_out_dir_that_is_not_a_checkpoint_is_refused_before_training(tmp_path):
    cfg = easy_config(tmp_path)
    cfg.sft.out_dir = str(tmp_path)
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing to replace"):
        run_sft(cfg, progress=False)
    assert not (tmp_path / "sft_log.jsonl").exists()
