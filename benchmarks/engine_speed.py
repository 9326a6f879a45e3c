"""Seconds per 1k generated tokens of the torch and vLLM engines on the same requests.

`nano` at its seeded random init (no warm-up needed), 256 requests (32 prompts x 8 samples) of
at most 64 tokens at temperature 1, both engines in one process, alternating, two repeats after a
warm-up call. The vLLM figure includes the recompute of log-probs and entropies by the policy's
forward (timed again on its own). Needs vLLM: run it with .venv-vllm/bin/python (`make
vllm-venv`).
"""

from __future__ import annotations

import time

from ibtpo.models import build_model, build_tokenizer, stop_token_ids
from ibtpo.rollout.engines.contract import SamplingParams
from ibtpo.rollout.engines.torch import TorchEngine
from ibtpo.rollout.engines.vllm import VllmEngine, VllmSettings
from ibtpo.seeding import stream_key


def main() -> None:
    tok = build_tokenizer()
    model = build_model("nano", tok, seed=0).eval()
    stops = stop_token_ids(tok, model)
    engines = {"torch": TorchEngine(model, stops, tok.pad_token_id),
               "vllm": VllmEngine(model, stops, tok.pad_token_id,
                                  settings=VllmSettings(kv_cache_mb=256))}
    prefixes = [tok(f"{i}+{i * 7 % 10}-3=")["input_ids"] for i in range(32) for _ in range(8)]
    keys = [stream_key(0, "engine_speed", i) for i in range(len(prefixes))]
    sampling = SamplingParams(1.0)
    for engine in engines.values():
        engine.generate(prefixes[:8], 8, sampling, keys[:8])  # warm-up
    for _ in range(2):
        for name, engine in engines.items():
            t0 = time.perf_counter()
            out = engine.generate(prefixes, 64, sampling, keys)
            seconds = time.perf_counter() - t0
            n = sum(len(s.token_ids) for s in out)
            line = f"{name}: {n} tokens in {seconds:.2f} s = {1000 * seconds / n:.3f} s per 1k"
            if name == "vllm":
                t0 = time.perf_counter()
                engine.score_samples(prefixes, [s.token_ids for s in out], 1.0)
                line += f" (of which the recompute {time.perf_counter() - t0:.2f} s)"
            print(line)


if __name__ == "__main__":
    main()
