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
from ibtpo.integrations.trl import (  # noqa: E402
    TRL_METHODS,
    TRL_OUTPUT_KEYS,
    add_ib_diagnostics,
    check_trl,
    eos_ids,
)

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


def grpo_trainer(checkpoint, out, num_iterations: int, eval_dataset=None, **settings):
    data = Dataset.from_list([{"prompt": f"{a}+{b}=", "answer": str(a + b)}
                              for a in range(4) for b in range(4)])
    args = GRPOConfig(**{**dict(
        output_dir=str(out), max_steps=2, per_device_train_batch_size=2 * G,
        gradient_accumulation_steps=1, num_generations=G, max_completion_length=12,
        temperature=1.0, learning_rate=1e-3, beta=0.0, num_iterations=num_iterations,
        use_cpu=True, report_to="none", save_strategy="no", logging_steps=1, seed=0,
        dataloader_num_workers=0, disable_tqdm=True), **settings})
    tok = AutoTokenizer.from_pretrained(checkpoint)
    return GRPOTrainer(model=str(checkpoint), reward_funcs=parity_reward, args=args,
                       train_dataset=data, eval_dataset=eval_dataset, processing_class=tok)


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


def test_evaluation_groups_by_num_generations_eval(chat_checkpoint, tmp_path):
    """TRL evaluates with num_generations_eval completions per prompt: with 2 (training G = 4)
    the hook cut the eval batch into groups of 4, found none and crashed the run ('trees:
    expected at least one tree'); now 4 eval completions are 2 groups of 2."""
    evals = Dataset.from_list([{"prompt": f"{a}+1=", "answer": str(a + 1)} for a in range(2)])
    trainer = grpo_trainer(chat_checkpoint, tmp_path, 1, eval_dataset=evals, max_steps=1,
                           num_generations_eval=2, per_device_eval_batch_size=4,
                           eval_strategy="steps", eval_steps=1)
    diag = add_ib_diagnostics(trainer)
    trainer.train()
    assert [h["prompts"] for h in diag.history] == [2, 2]  # one training batch, one eval batch
    assert [len(g) for g in diag.last_groups] == [2, 2]
    assert any("eval_ibtpo/ib_score_root" in row for row in trainer.state.log_history)


def test_masked_truncated_completions_are_left_out(chat_checkpoint, tmp_path):
    """mask_truncated_completions=True: TRL zeroes a truncated completion's mask; the hook made
    it a 0-token chain (IB-Score exactly -1/beta, cov 0). Now it is left out of its group, a
    group left empty is dropped, and truncated_left_out says how many."""
    trainer = grpo_trainer(chat_checkpoint, tmp_path, 1, mask_truncated_completions=True)
    diag = add_ib_diagnostics(trainer)
    eos = trainer.eos_token_ids[0]
    ids = torch.tensor([[40, 41, eos], [42, eos, 0], [40, 43, 44], [41, 42, 43]] +
                       [[40, 41, 42]] * 4)  # group 0: two finished, two truncated; group 1: all
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0], [0, 0, 0]] + [[0, 0, 0]] * 4)
    logps = torch.full((8, 3), -1.0)
    diag._rewards = torch.tensor([1.0, 0.0, 0.0, 0.0] + [0.0] * 4)
    output = {"prompt_ids": torch.ones(8, 2, dtype=torch.long), "prompt_mask": torch.ones(8, 2),
              "completion_ids": ids, "completion_mask": mask, "old_per_token_logps": logps}
    figures = diag.record(output)
    assert [[c.token_ids for c in g] for g in diag.last_groups] == [[[40, 41, eos], [42, eos]]]
    assert figures["prompts"] == 1 and figures["truncated_left_out"] == 6 / 8
    # root over the two finished completions: pi_bar = e^-1 each, r = 1/0.5 = 2 and 0, so
    # IB = e^-1 * ((2 - 1.2) + (0 - 1.2)) / 2 = -0.2 * e^-1 (not -1/beta = -0.2)
    assert figures["ib_score_root"] == pytest.approx(-0.2 * math.exp(-1))
    assert figures["eff_rate"] == 1.0 and figures["avg_rate"] == 0.5
    diag._rewards = torch.zeros(8)
    assert diag.record({**output, "completion_mask": torch.zeros(8, 3)}) is None  # none left


class _Tok:
    eos_token_id = 2


class _Trainer:
    processing_class = _Tok()


def test_eos_ids_are_trls_own_when_it_has_them():
    """TRL 1.16 keeps every stop id in trainer.eos_token_ids (under its vLLM path too, where
    trainer.generation_config is absent): the hook used only the tokenizer's and the
    generation config's, so a completion ending at another stop id counted as truncated."""
    trainer = _Trainer()
    assert eos_ids(trainer) == {2}  # no TRL attribute: the tokenizer's EOS
    trainer.eos_token_ids = [2, 9]
    assert eos_ids(trainer) == {2, 9}


def test_the_private_trl_api_the_hook_uses_is_still_there(chat_checkpoint, tmp_path):
    """Fails loudly when a TRL release renames or reshapes what the hook reads: the wrapped
    private methods with their parameters, the attributes, and the generation output's keys."""
    import inspect

    import trl

    trainer = grpo_trainer(chat_checkpoint, tmp_path, 1)
    check_trl(trainer)  # raises naming the TRL version and what changed
    for name, params in TRL_METHODS.items():
        got = tuple(inspect.signature(getattr(GRPOTrainer, name)).parameters)[1:]
        assert got == params, (trl.__version__, name, got)
    for name in ("num_generations_eval", "eos_token_ids", "mask_truncated_completions",
                 "reward_weights", "temperature", "_metrics"):
        assert hasattr(trainer, name), (trl.__version__, name)
    source = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    assert all(f'"{key}": {key}' in source for key in TRL_OUTPUT_KEYS), trl.__version__

    class Renamed(GRPOTrainer):
        def _calculate_rewards(self, inputs, prompts, completions):
            pass

    trainer.__class__ = Renamed
    with pytest.raises(RuntimeError, match=r"TRL .*_calculate_rewards takes \(inputs, prompts, "
                                           r"completions\)"):
        check_trl(trainer)
