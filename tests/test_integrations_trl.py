"""IB-Score diagnostics of a real TRL GRPOTrainer run (integrations/trl.py), checked against
ibtpo's per-node reference `ib_diagnostics` on the same groups; skipped without the trl extra."""

import functools
import math

import pytest
import torch

pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from ibtpo.core.ib_score import ib_diagnostics  # noqa: E402
from ibtpo.core.tree import split_steps  # noqa: E402
from ibtpo.integrations.trl import add_ib_diagnostics  # noqa: E402

G = 4


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """TRL's trainer sets accelerate's process-wide state (its mixed precision among it); later
    tests build ibtpo trainers, whose Accelerator would inherit it: reset it after each test."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def parity_reward(prompts, completions, **_):
    """A [0, 1] reward that varies within groups: 1 for an even number of characters."""
    return [float(len(c) % 2 == 0) for c in completions]


def grpo_trainer(checkpoint, out, num_iterations: int):
    data = Dataset.from_list([{"prompt": f"{a}+{b}=", "answer": str(a + b)}
                              for a in range(4) for b in range(4)])
    args = GRPOConfig(output_dir=str(out), max_steps=2, per_device_train_batch_size=2 * G,
                      gradient_accumulation_steps=1, num_generations=G, max_completion_length=12,
                      temperature=1.0, learning_rate=1e-3, beta=0.0, num_iterations=num_iterations,
                      use_cpu=True, report_to="none", save_strategy="no", logging_steps=1,
                      seed=0, dataloader_num_workers=0, disable_tqdm=True)
    tok = AutoTokenizer.from_pretrained(checkpoint)
    return GRPOTrainer(model=str(checkpoint), reward_funcs=parity_reward, args=args,
                       train_dataset=data, processing_class=tok)


def reference_root_figures(groups, decode) -> dict:
    """Root IB-Score, cov, Tsallis (per-node loop reference) and Eff-Rate of GRPO groups: the
    root's children are the completions' first steps; p_hat(child) = the completion's reward."""
    rows = []
    for group in groups:
        probs = []
        for c in group:
            a, b = split_steps(c.token_ids, decode, "\n\n")[0] if c.token_ids else (0, 0)
            span = c.logprobs[a:b]
            probs.append(math.exp(sum(span) / len(span)) if span else 1.0)
        rewards = [c.reward or 0.0 for c in group]
        rows.append((ib_diagnostics(probs, rewards, sum(rewards) / len(rewards), beta=5.0),
                     max(rewards) != min(rewards)))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"ib_score_root": mean([d["ib"] for d, _ in rows]),
            "cov_root": mean([d["cov"] for d, _ in rows]),
            "tsallis_root": mean([d["tsallis"] for d, _ in rows]),
            "eff_rate": mean([float(e) for _, e in rows])}


def test_trl_grpo_run_logs_ib_diagnostics_equal_to_ibtpo(chat_checkpoint, tmp_path):
    trainer = grpo_trainer(chat_checkpoint, tmp_path, num_iterations=2)
    diag = add_ib_diagnostics(trainer)  # the user's one line (after the import)
    seen = []
    inner = trainer._generate_and_score_completions

    def check_logprobs(inputs):  # ibtpo's forward vs TRL's own old log-probs, same weights
        output = inner(inputs)
        ours, mask = diag.forward_logprobs(output), output["completion_mask"].bool()
        seen.append(float((ours - output["old_per_token_logps"])[mask].abs().max()))
        return output

    trainer._generate_and_score_completions = check_logprobs
    trainer.train()
    assert seen and max(seen) < 1e-4, seen
    assert len(diag.history) >= 1 and diag.history[-1]["prompts"] == 2
    tok = trainer.processing_class
    want = reference_root_figures(diag.last_groups,
                                  functools.partial(tok.decode, skip_special_tokens=True))
    got = diag.history[-1]
    assert got["eff_rate"] > 0 and got["cov_root"] != 0  # groups with a learning signal
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    logged = [row for row in trainer.state.log_history if "ibtpo/ib_score_root" in row]
    assert logged and {"ibtpo/cov_root", "ibtpo/tsallis_root", "ibtpo/eff_rate"} <= set(logged[0])
    assert logged[0]["ibtpo/ib_score_root"] == pytest.approx(diag.history[0]["ib_score_root"])


def test_rewards_outside_0_1_are_refused(chat_checkpoint, tmp_path):
    trainer = grpo_trainer(chat_checkpoint, tmp_path, num_iterations=1)
    diag = add_ib_diagnostics(trainer)
    ids = torch.ones(G, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="reward_index"):
        diag.groups(ids, torch.ones_like(ids), torch.zeros(G, 3), torch.tensor([2.0, 0, 0, 0]))
