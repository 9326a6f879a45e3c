"""LoRA: only the adapters train, the reference is the base model (adapters off, no copy),
adapters are saved and resumed, the export merges them."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from ibtpo.config import load_config
from ibtpo.data import load_task
from ibtpo.models import load_model
from ibtpo.training.lora import AdaptersDisabled
from ibtpo.training.trainer import Trainer

pytest.importorskip("peft")
ROWS = [{"prompt": f"{a}+{b}=?", "answer": str(a + b)} for a in range(6) for b in range(6)]
IDS = torch.tensor([[1, 40, 41, 42, 43, 44, 45]])  # <|im_start|> and a few BPE tokens


def lora_config(checkpoint, out, *extra):
    return load_config([], [f"train.init={checkpoint}", "model.chat_template=true",
                            "task.reward=numeric", "task.eval_size=4", "eval.size=4", "eval.k=1",
                            "sampling.max_new_tokens=12", "train.prompts_per_step=2",
                            "rollout.rounds=2", "lora.r=4", "train.lr=1e-2",
                            "train.warmup_steps=0", f"train.out_dir={out}",
                            "train.tensorboard=false", *extra])


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.fixture
def trained(chat_checkpoint, tmp_path):
    """A LoRA trainer after two steps (LoRA's B starts at 0, so A only moves from step 2 on)."""
    cfg = lora_config(chat_checkpoint, tmp_path / "run")
    trainer = Trainer(cfg, progress=False, task=load_task(cfg.task, ROWS))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train_step()
    trainer.train_step()
    return trainer, before


def test_only_the_adapters_train(trained):
    trainer, before = trained
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)}
    adapters = {n for n in before if "lora_" in n}
    assert adapters and changed == adapters
    trainable = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert trainable == {id(p) for n, p in trainer.model.named_parameters() if "lora_" in n}


def test_reference_is_the_base_model_without_a_copy(trained, chat_checkpoint):
    trainer, _ = trained
    base, _ = load_model(str(chat_checkpoint))
    assert isinstance(trainer.ref_model, AdaptersDisabled)
    assert trainer.ref_model.model is trainer.model  # no second copy of the weights
    torch.testing.assert_close(logits(trainer.ref_model), logits(base), atol=1e-6, rtol=0)
    assert (logits(trainer.model) - logits(base)).abs().max() > 1e-3  # the adapters act


def test_adapters_are_saved_resumed_and_merged_on_export(trained, tmp_path):
    trainer, _ = trained
    ckpt = trainer.save_checkpoint()
    assert (ckpt / "adapter_model.safetensors").is_file()
    assert not (ckpt / "model.safetensors").exists()
    want = logits(trainer.model)
    reloaded, _ = load_model(str(ckpt))  # base model + saved adapters
    torch.testing.assert_close(logits(reloaded), want, atol=1e-6, rtol=0)
    resumed = Trainer(trainer.cfg, resume=True, progress=False, task=trainer.task)
    torch.testing.assert_close(logits(resumed.model), want, atol=1e-6, rtol=0)
    out = trainer.export(tmp_path / "export")
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").is_file()
    plain = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert not any("lora_" in n for n, _ in plain.named_parameters())
    torch.testing.assert_close(logits(plain), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits(trainer.model), want)  # export left the adapters alone
