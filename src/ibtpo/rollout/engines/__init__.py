"""Generation engines: the contract every backend meets (`contract`) and one module per backend,
picked by `rollout.engine`: `torch` (the built-in default) and `vllm` (imported only when asked
for, so the core and the torch path never need vLLM). The sampler, the schedulers' callers and
the evaluation see only the contract."""

from __future__ import annotations

ENGINES = ("torch", "vllm")


def build_engine(cfg, model, tokenizer):
    """The engine of `cfg.rollout.engine` over `model`: stops at every stop id of the tokenizer
    and the model, pads with the tokenizer's pad id, `cfg.eval.batch_size` rows at a time."""
    from ibtpo.models import stop_token_ids

    r = cfg.rollout
    args = (model, stop_token_ids(tokenizer, model), tokenizer.pad_token_id)
    if r.engine == "torch":
        from ibtpo.rollout.engines.torch import TorchEngine

        return TorchEngine(*args, batch_size=cfg.eval.batch_size)
    if r.engine == "vllm":
        from ibtpo.rollout.engines.vllm import VllmEngine, VllmSettings

        settings = VllmSettings(kv_cache_mb=r.vllm_kv_cache_mb,
                                gpu_memory_utilization=r.vllm_gpu_memory_utilization,
                                max_model_len=r.vllm_max_model_len)
        return VllmEngine(*args, batch_size=cfg.eval.batch_size, settings=settings)
    raise ValueError(f"rollout.engine: got {r.engine!r}, expected one of "
                     f"{', '.join(map(repr, ENGINES))}")
