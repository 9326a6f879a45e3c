"""LoRA through peft (extra `peft`): adapters on the policy, the base model as the reference.

- `add_adapters(model, cfg.lora)`: wraps the model in a `peft` LoRA model; only the adapters
  require gradients (the base weights are frozen by peft).
- `AdaptersDisabled(model)`: the reference policy without a second copy of the weights: a call
  runs the same module with its adapters switched off (`disable_adapter()`), so it computes
  exactly the base model.
- `load_adapter_weights(model, directory)`: the adapters of a saved checkpoint (resume).
Saving a LoRA policy (`save_pretrained`) writes the adapters only; `ibtpo.export` merges them
into the base weights for a plain checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from ibtpo.config import LoRAConfig


def import_peft():
    try:
        import peft
    except ImportError:
        raise ImportError("lora.r > 0 needs peft: pip install 'ibtpo[peft]'") from None
    return peft


def is_lora(model) -> bool:
    """Whether `model` is a peft model (adapters on a base model)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def add_adapters(model, cfg: LoRAConfig):
    """`model` with trainable LoRA adapters (rank `cfg.r`) on `cfg.target_modules`."""
    peft = import_peft()
    targets = cfg.target_modules
    config = peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                             target_modules="all-linear" if targets == ["all-linear"] else targets,
                             task_type="CAUSAL_LM")
    try:
        return peft.get_peft_model(model, config)
    except ValueError as err:
        raise ValueError(f"lora.target_modules={targets!r}: {err}") from None


class AdaptersDisabled:
    """Calls `model` with its adapters switched off: the base model, sharing its weights."""

    def __init__(self, model):
        self.model = model

    def __call__(self, *args, **kwargs):
        with self.model.disable_adapter():
            return self.model(*args, **kwargs)

    def parameters(self):
        """The shared parameters (callers read the device and dtype from them)."""
        return self.model.parameters()


def load_adapter_weights(model, directory: str | Path) -> None:
    """Load the adapters saved in `directory` (adapter_model.safetensors) into `model`."""
    peft = import_peft()
    from safetensors.torch import load_file

    file = Path(directory) / "adapter_model.safetensors"
    if not file.is_file():
        raise FileNotFoundError(f"{directory}: no adapter_model.safetensors (lora.r > 0 expects a "
                                "LoRA checkpoint)")
    peft.set_peft_model_state_dict(model, load_file(file))
