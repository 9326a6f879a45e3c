"""Trainer: a tiny run that really learns, resume, atomic checkpoints, micro-batch equivalence."""

import json
import random

import pytest
import torch

from ibtpo.cli import main
from ibtpo.config import load_config, resolve_config_path
from ibtpo.data import load_task
from ibtpo.data.arithmetic import ArithmeticTask
from ibtpo.data.rewards import get_reward_fn
from ibtpo.evaluation import evaluate
from ibtpo.metrics import METRIC_DOCS, read_metrics
from ibtpo.training.batch import from_trees
from ibtpo.training.checkpoint import latest_checkpoint
from ibtpo.training.faults import TrainingError
from ibtpo.training.logprobs import sequence_logprobs
from ibtpo.training.trainer import Trainer, _agg_count

EASY = ["task.terms=[2]", "task.max_operand=9", "task.eval_size=30", "sampling.max_new_tokens=24",
        "eval.size=30", "eval.k=2", "train.tensorboard=false", "train.eval_every=0"]


def rl_config(init, out, *extra, name="ibtpo"):
    return load_config([resolve_config_path(name)],
                       EASY + [f"train.init={init}", f"train.out_dir={out}", *extra])


def fixed_prompt_file(tmp_path, n: int = 12):
    """n easy built-in problems as a JSONL dataset (also exercises the dataset loader)."""
    base = load_config(overrides=["task.terms=[2]", "task.max_operand=9", "task.eval_size=30"])
    problems = ArithmeticTask(base.task).train_batch(n, random.Random(0))
    path = tmp_path / "fixed.jsonl"
    path.write_text("".join(json.dumps({"prompt": p.prompt, "answer": p.answer}) + "\n"
                            for p in problems))
    return path


def test_ibtpo_run_raises_reward_and_changes_parameters(warm_checkpoint, tmp_path):
    data = fixed_prompt_file(tmp_path)
    cfg = rl_config(warm_checkpoint, tmp_path / "run", f"task.name={data}", "task.eval_size=4",
                    "eval.size=4", "train.steps=25", "train.prompts_per_step=8", "train.lr=3e-4")
    trainer = Trainer(cfg, progress=False)
    train_rows = trainer.task.train_batch(8, random.Random(0))
    reward_fn = get_reward_fn("arithmetic")

    def solved() -> float:  # mean reward of 16 samples on each training prompt
        return evaluate(trainer.model, trainer.policy.tokenizer, train_rows, reward_fn, k=16,
                        max_new_tokens=24, seed=0)["avg@16"]

    before_params = [p.detach().clone() for p in trainer.model.parameters()]
    before = solved()
    trainer.train()
    after = solved()
    assert all(not torch.equal(b, p) for b, p in zip(before_params, trainer.model.parameters()))
    rows = read_metrics(tmp_path / "run")
    # The learning signal is avg@16 on the training prompts (128 samples per evaluation), measured
    # over train.seed 0-3 on AVX-512 kernels: 0.23 -> 0.46-0.60, and passing on a real AVX2
    # machine. The rollout reward of the last 7 steps against the first 7 is not asserted: its
    # spread is too large for 25 steps (+0.09 to +0.27 over those seeds, but -0.003 on AVX2
    # kernels, which the tests now run on every machine: conftest pins model.kernels=portable).
    assert after > before + 0.1, (before, after)
    key = "rollout/trajectories_per_prompt"
    g = [r[key] for r in rows if key in r]
    # G = B0 + (L-1)*K*Bn = 4 + 8 while responses have a step to branch below the root (the warm
    # model's chains); at lr 3e-4 the policy may learn to answer in one step (no branch point:
    # G = B0 = 4), as it does by step 25 on the portable kernels
    assert g[0] == 12 and all(4 <= x <= 12 for x in g), g
    undocumented = {k for r in rows for k in r} - set(METRIC_DOCS) - {"step"}
    assert not undocumented, undocumented


def test_resume_continues_step_counter_and_state(warm_checkpoint, tmp_path):
    first = Trainer(rl_config(warm_checkpoint, tmp_path, "train.steps=2",
                              "train.prompts_per_step=4", name="grpo"), progress=False)
    first.train()
    cfg = rl_config(warm_checkpoint, tmp_path, "train.steps=3", "train.prompts_per_step=4",
                    name="grpo")
    resumed = Trainer(cfg, resume=True, progress=False)
    assert resumed.step == 2 and resumed.generated_tokens == first.generated_tokens
    assert resumed.problem_rng.getstate() == first.problem_rng.getstate()
    for a, b in zip(first.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    opt_a, opt_b = first.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(opt_a[i]["exp_avg"], opt_b[i]["exp_avg"]) for i in opt_a)
    resumed.train()
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2, 3]


def test_resume_without_checkpoint_is_a_clear_error(warm_checkpoint, tmp_path, capsys):
    code = main(["train", "--config", "grpo", "--set", f"train.init={warm_checkpoint}",
                 "--set", f"train.out_dir={tmp_path}", "--resume", "--no-progress"])
    assert code == 2
    assert "no checkpoint in" in capsys.readouterr().err


def test_failed_checkpoint_write_keeps_the_previous_one(warm_checkpoint, tmp_path, monkeypatch):
    trainer = Trainer(rl_config(warm_checkpoint, tmp_path, "train.steps=1", name="grpo"),
                      progress=False)
    path = trainer.save_checkpoint()
    saved = (path / "model.safetensors").read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with torch.no_grad():
        next(trainer.model.parameters()).add_(1.0)
    trainer.step = 1
    monkeypatch.setattr(trainer.model, "save_pretrained", broken_save)
    with pytest.raises(TrainingError, match="No space left on device.*earlier checkpoints are "
                                            "intact"):
        trainer.save_checkpoint()
    root = tmp_path / "checkpoints"
    assert latest_checkpoint(tmp_path) == path and path.name == "step-00000000"
    assert (path / "model.safetensors").read_bytes() == saved
    assert json.loads((path / "ibtpo.json").read_text())["step"] == 0
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000000"]  # no temp dir


@pytest.mark.parametrize("agg_mode",
                         ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"])
def test_micro_batches_accumulate_to_the_full_batch_gradient(warm_checkpoint, tmp_path, agg_mode):
    grads = []
    for micro in (64, 5):
        cfg = rl_config(warm_checkpoint, tmp_path, "train.prompts_per_step=3",
                        f"train.micro_batch_size={micro}", f"loss.agg_mode={agg_mode}")
        trainer = Trainer(cfg, progress=False)
        problems = trainer.task.train_batch(3, trainer.problem_rng)
        trees, _ = trainer.rollout(problems)
        adv, _ = trainer.estimator(trees, trainer.adv_params)
        batch = from_trees(trees, adv, trainer.policy.tokenizer.pad_token_id)
        trainer.optimizer.zero_grad()
        for mb, weight in trainer.micro_batches(batch):
            loss, _ = trainer.micro_step(mb)
            (loss * weight).backward()
        grads.append(torch.cat([p.grad.flatten() for p in trainer.model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def test_sequence_logprobs_position_t_scores_token_t(warm_checkpoint):
    from ibtpo.models import load_model

    model, _ = load_model(str(warm_checkpoint))
    ids = torch.tensor([[1, 5, 6, 7, 0]])  # last token is padding
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    logp, ent = sequence_logprobs(model, ids, mask, temperature=0.7)
    full = torch.log_softmax(model(ids[:, :4]).logits.float() / 0.7, -1)
    # token 2 (id 6) is predicted by the logits at position 1
    assert torch.allclose(logp[0, 2], full[0, 1, 6], atol=1e-5)
    assert logp[0, 0] == 0 and ent.shape == (1, 5) and (ent[0, 1:4] > 0).all()


def test_agg_count():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0]])
    assert _agg_count(mask, "token-mean") == 3
    assert _agg_count(mask, "seq-mean-token-mean") == 2
    assert _agg_count(mask, "seq-mean-token-sum-norm") == 3


CHAT_ROWS = [{"prompt": f"{a}+{b}=?", "answer": str(a + b)} for a in range(6) for b in range(6)]


def chat_trainer(checkpoint, out, *extra):
    """A Trainer on the saved BPE chat model (tests/conftest.py), chat template on."""
    cfg = load_config([], [f"train.init={checkpoint}", "model.chat_template=true",
                           "task.reward=numeric", "task.eval_size=4", "eval.size=4", "eval.k=1",
                           "sampling.max_new_tokens=16", "train.prompts_per_step=4",
                           f"train.out_dir={out}", "train.tensorboard=false", *extra])
    return Trainer(cfg, progress=False, task=load_task(cfg.task, CHAT_ROWS))


def test_a_saved_chat_model_trains_a_step_on_chat_prompts(chat_checkpoint, tmp_path):
    # the untrained chat model answers in one step, so only the root can be branched from
    trainer = chat_trainer(chat_checkpoint, tmp_path, "rollout.branch_from_root=true")
    tok = trainer.policy.tokenizer
    assert tok.decode(trainer.policy.encode("1+2=?")).startswith("<|im_start|>user\n1+2=?")
    assert trainer.policy.engine.stop_ids == [0, 2]  # <|endoftext|> and <|im_end|>
    before = [p.detach().clone() for p in trainer.model.parameters()]
    metrics = trainer.train_step()
    assert metrics["rollout/num_trajectories"] == 4 * 12  # P = 4 trees, G = 4 + 8
    assert all(not torch.equal(b, p) for b, p in zip(before, trainer.model.parameters()))


@pytest.mark.parametrize("dtype, recompute", [("float32", False), ("bfloat16", True)])
def test_first_ratio_is_one(chat_checkpoint, tmp_path, dtype, recompute):
    trainer = chat_trainer(chat_checkpoint, tmp_path, f"model.dtype={dtype}",
                           f"train.recompute_old_logprobs={str(recompute).lower()}")
    metrics = trainer.train_step()
    assert abs(metrics["loss/ratio_mean"] - 1.0) < 1e-3, metrics["loss/ratio_mean"]
    assert metrics["loss/clipfrac"] == 0.0


def test_recomputed_old_logprobs_equal_the_training_forward_in_bf16(chat_checkpoint, tmp_path):
    """Sampling (KV cache, one token at a time) and training (whole sequences) run different bf16
    kernels: measured here, the sampler's log-probs differ from the training forward's by up to
    2.4e-3 per token (a ratio of 1.0024); recomputed with the training forward they are equal."""
    trainer = chat_trainer(chat_checkpoint, tmp_path, "model.dtype=bfloat16")
    problems = trainer.task.train_batch(4, trainer.problem_rng)
    trees, _ = trainer.rollout(problems)
    adv, _ = trainer.estimator(trees, trainer.adv_params)
    batch = from_trees(trees, adv, trainer.policy.tokenizer.pad_token_id)
    recomputed = trainer.recompute_old_logprobs(batch)
    trainer.model.train()
    with torch.no_grad(), trainer.autocast():  # fp32 master weights, bf16 compute
        logprobs, _ = sequence_logprobs(trainer.model, batch.input_ids, batch.attention_mask,
                                        entropy=None)
    mask = batch.response_mask
    assert ((logprobs - batch.old_logprobs) * mask).abs().max() > 1e-4  # the sampler's
    assert ((logprobs - recomputed.old_logprobs) * mask).abs().max() < 1e-6
    assert torch.equal(recomputed.old_logprobs * (1 - mask), torch.zeros_like(mask))


def test_train_wandb_project_logs_every_step_to_weights_and_biases(warm_checkpoint, tmp_path,
                                                                   monkeypatch):
    import sys

    from test_metrics import _FakeWandb

    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = rl_config(warm_checkpoint, tmp_path, "train.steps=2", "train.prompts_per_step=2",
                    "train.wandb_project=ib", name="grpo")
    trainer = Trainer(cfg, progress=False)
    trainer.train()
    assert fake.inits[0]["project"] == "ib"
    assert fake.inits[0]["config"]["train"]["lr"] == cfg.train.lr
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [s for s, _ in fake.rows] == [r["step"] for r in logged]  # every row, as in the JSONL
    assert [s for s, _ in fake.rows][-2:] == [1, 2] and "loss/pg" in fake.rows[-1][1]
    assert fake.finished == 1
