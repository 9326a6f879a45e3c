"""The GPU check (issue 16): one command, at most ~5 minutes on a CUDA machine, nothing downloaded.

    .venv/bin/python benchmarks/gpu_check.py [--out runs/gpu_check.md] [--steps 3] [--smoke]

Every check is one row of one markdown table (check, status ok / FAIL / skip, seconds, detail),
written to `--out` and printed; the exit status is 1 when a check failed.
1. `pytest`: the suite's CUDA tests (`-k cuda` over test_engine and test_scheduler).
2. `engine`: a random tiny Llama on CUDA against the same weights on CPU: greedy tokens equal,
   sampled tokens from the same stream keys (the share equal is reported: a token differs only
   when its uniform falls within the devices' last-bit differences of a CDF boundary), log-probs
   of the same tokens within 1e-4.
3. `scheduler`: on CUDA, the continuous scheduler grows the synchronous one's trees (same tokens,
   branch points, rewards; log-probs within 1e-4), without and with prefix KV reuse
   (`rollout.prefix_cache_mb`).
4. `flex`: packed trees (`training.packing`) through the model with FlexAttention
   (`tree_block_mask`, attn_implementation "flex_attention") against SDPA with the dense boolean
   mask: logits within 1e-4 (fp32), and the gradient of the summed log-probs within 1e-3
   (relative to its largest entry).
5. `bf16`: the engine on a bf16 model (finite fp32 log-probs); one training step with
   `train.autocast=bf16` (finite loss).
6. step times on the `tiny` preset (fresh weights, the built-in task): GRPO, IB-TPO with the
   synchronous and the continuous scheduler (also with prefix KV reuse), one untimed step each
   then `--steps` alternating timed steps: medians of seconds per step, rollout seconds, seconds
   per 1k generated tokens, and P4 = IB-TPO / GRPO seconds per 1k generated tokens.
`--smoke` (automatic without CUDA): on CPU, the `nano` preset, 2 prompts of 8-token responses,
one timed step, no FlexAttention (torch has no FlexAttention backward on CPU, and its CPU forward
compiles for ~30 s). The test suite runs it (tests/test_gpu_check.py); nothing there needs a GPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded

from ibtpo import kernels  # noqa: E402

kernels.pin("portable")  # before torch runs anything (CPU kernels; no effect on CUDA's)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from ibtpo.rollout.engines.contract import SamplingParams  # noqa: E402
from ibtpo.rollout.engines.torch import TorchEngine as Engine  # noqa: E402
from ibtpo.rollout.sampler import RolloutParams, sample_trees  # noqa: E402
from ibtpo.rollout.scheduler import grow_trees_continuously  # noqa: E402
from ibtpo.seeding import stream_key  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VOCAB, PAD, BOS, EOS = 40, 0, 1, 2
PREFIXES = [[BOS, 5, 6, 7, 8, 9, 10], [BOS, 3], [BOS, 4, 4, 4, 11], [BOS] + list(range(12, 30))]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "runs" / "gpu_check.md"), help="markdown table")
    p.add_argument("--steps", type=int, default=3, help="timed steps per trainer")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny sizes (automatic without CUDA)")
    args = p.parse_args(argv)
    args.smoke = args.smoke or not torch.cuda.is_available()
    args.device = "cpu" if args.smoke else "cuda"
    return args


def random_llama(device: str, dtype=torch.float32) -> LlamaForCausalLM:
    """A seeded random tiny Llama (the engine tests' model)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    return LlamaForCausalLM(cfg).eval().to(device=device, dtype=dtype)


def keys(n: int, seed: int = 0) -> list[int]:
    return [stream_key(seed, "gpu-check", i) for i in range(n)]


# ----------------------------------------------------------------------------- checks


def check_pytest(args) -> str:
    """The suite's CUDA tests, in a subprocess."""
    if args.smoke:
        return "skip: no CUDA (the CUDA tests skip themselves)"
    files = [f"tests/{f}" for f in ("test_engine.py", "test_scheduler.py")]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-k", "cuda", *files],
                         cwd=ROOT, capture_output=True, text=True, timeout=240)
    tail = (run.stdout.strip().splitlines() or ["no output"])[-1]
    assert run.returncode in (0, 5), run.stdout[-2000:] + run.stderr[-2000:]
    return tail


def check_engine(args) -> str:
    """CUDA against CPU: greedy tokens equal; sampled tokens share; log-probs within 1e-4."""
    cpu, dev = random_llama("cpu"), random_llama(args.device)
    limits, greedy = [6, 9, 4, 12], SamplingParams(temperature=0)
    a = Engine(cpu, VOCAB + 7, PAD).generate(PREFIXES, limits, greedy)
    b = Engine(dev, VOCAB + 7, PAD).generate(PREFIXES, limits, greedy)
    assert [s.token_ids for s in a] == [s.token_ids for s in b], "greedy tokens differ"
    worst = max(abs(x - y) for s, t in zip(a, b) for x, y in zip(s.logprobs, t.logprobs))
    assert worst < 1e-4, f"greedy log-probs differ by {worst:.2e}"
    copies, n = (2, 6) if args.smoke else (8, 16)
    prefixes, k = PREFIXES * copies, keys(len(PREFIXES) * copies)
    sa = Engine(cpu, EOS, PAD).generate(prefixes, n, SamplingParams(), k)
    sb = Engine(dev, EOS, PAD).generate(prefixes, n, SamplingParams(), k)
    same = sum(x.token_ids == y.token_ids for x, y in zip(sa, sb)) / len(sa)
    return f"greedy equal, log-probs within {worst:.1e}; sampled rows equal to CPU's: {same:.0%}"


def grow_both(args, prefix_cache_mb: int = 0, **kw):
    """The same trees grown by both schedulers on the device (the continuous one with prefix KV
    reuse when `prefix_cache_mb`)."""
    model = random_llama(args.device)
    params = RolloutParams(max_new_tokens=10 if args.smoke else 24, **kw)
    reuse = RolloutParams(max_new_tokens=params.max_new_tokens, prefix_cache_mb=prefix_cache_mb,
                          **kw)
    decode = lambda ids: "".join("\n" if 3 <= i < 10 else chr(97 + i % 26) for i in ids)  # noqa
    reward = lambda prompts, completions, **_: [float(len(c) % 2 == 0) for c in completions]  # noqa
    out = []
    for grow, p in ((sample_trees, params), (grow_trees_continuously, reuse)):
        trees, m = grow(Engine(model, EOS, PAD), PREFIXES, ["p"] * 4, None, reward, decode,
                        p, SamplingParams(), keys(4, 1))
        out.append((trees, m))
    return out


def check_scheduler(args) -> str:
    """Continuous and synchronous schedulers grow the same trees on the device, also with
    prefix KV reuse."""
    worst, notes = 0.0, []
    for mb in (0, 1):
        (a, _), (b, m) = grow_both(args, prefix_cache_mb=mb, scorer="ib", b0=2,
                                   rounds=3 if args.smoke else 5)
        for ta, tb in zip(a, b):
            na, nb = ta.nodes(), tb.nodes()
            assert [(n.token_ids, n.reward) for n in na] == [(n.token_ids, n.reward) for n in nb]
            assert ([na.index(n) for n in ta.branch_points]
                    == [nb.index(n) for n in tb.branch_points])
            worst = max([worst] + [abs(x - y) for p, q in zip(na, nb)
                                   for x, y in zip(p.logprobs, q.logprobs)])
        notes.append(f"{m['rollout/joins']:.0f} joins"
                     + (f", {m['rollout/prefix_hits']:.0f} from the prefix cache" if mb else ""))
    assert worst < 1e-4, f"log-probs differ by {worst:.2e}"
    return f"same trees; log-probs within {worst:.1e}; {'; with KV reuse '.join(notes)}"


def packed_batch(args):
    """Packed trees from a short rollout of the `tiny` preset, and the model."""
    from ibtpo.models import build_model, build_tokenizer
    from ibtpo.training.packing import pack_trees

    tok = build_tokenizer()
    model = build_model("nano" if args.smoke else "tiny", tok, seed=0).to(args.device).eval()
    engine = Engine(model, tok.eos_token_id, tok.pad_token_id)
    prompts = [tok.encode(f"{a}+{b}=") for a, b in ((3, 4), (12, 30), (7, 7), (45, 8))]
    params = RolloutParams(max_new_tokens=8 if args.smoke else 48, scorer="random", b0=2,
                           rounds=2 if args.smoke else 4, step_delimiter="1")
    trees, _ = sample_trees(engine, prompts, ["p"] * 4, None,
                            lambda prompts, completions, **_: [0.5] * len(completions),
                            lambda ids: tok.decode(ids, skip_special_tokens=True), params,
                            SamplingParams(), keys(4, 2))
    return model, pack_trees(trees, tok.pad_token_id, 256, unroll="never")


def packed_logits(model, batch, attention: str, backward: bool = True):
    """(logits (R, L, V), gradient of the summed log-probs of the step tokens at the first
    layer's query projection, or None without `backward`)."""
    model.zero_grad(set_to_none=True)
    model.set_attn_implementation("flex_attention" if attention == "flex" else "sdpa")
    inputs = batch.model_inputs(attention)
    with torch.set_grad_enabled(backward):
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                       position_ids=inputs["position_ids"], use_cache=False).logits.float()
    if not backward:
        return logits, None
    logp = F.log_softmax(logits, -1).gather(-1, batch.input_ids[..., None])[..., 0]  # (R, L)
    (logp * (batch.token_node >= 0)).sum().backward()
    grad = model.model.layers[0].self_attn.q_proj.weight.grad.clone()
    return logits.detach(), grad


def check_flex(args) -> str:
    """FlexAttention (block mask) against SDPA (dense mask) on packed trees, fp32."""
    model, batch = packed_batch(args)
    if args.smoke:  # the dense half runs, so the check's own code is exercised
        packed_logits(model, batch, "sdpa")
        return (f"skip: no CUDA (no FlexAttention backward on CPU); dense path ran on "
                f"{batch.input_ids.shape[0]} rows x {batch.input_ids.shape[1]} tokens")
    dense, gd = packed_logits(model, batch, "sdpa")
    flex, gf = packed_logits(model, batch, "flex")
    model.set_attn_implementation("sdpa")
    real = torch.arange(batch.input_ids.shape[1], device=dense.device)[None] < \
        batch.row_length[:, None]  # (R, L) tokens before each row's padding
    worst = float((dense - flex).abs()[real].max())
    rel = float((gd - gf).abs().max() / gd.abs().max())
    assert worst < 1e-4 and rel < 1e-3, f"logits {worst:.2e}, gradient {rel:.2e}"
    return (f"{batch.input_ids.shape[0]} rows x {batch.input_ids.shape[1]} tokens: logits "
            f"within {worst:.1e}, gradient within {rel:.1e} (relative)")


def check_bf16(args) -> str:
    """bf16 engine: finite fp32 log-probs; a training step under bf16 autocast: finite loss."""
    model = random_llama(args.device, torch.bfloat16)
    samples = Engine(model, VOCAB + 7, PAD).generate(PREFIXES, 5, SamplingParams(), keys(4))
    assert all(torch.isfinite(torch.tensor(s.logprobs)).all() for s in samples)
    if args.smoke:
        return "engine ok; autocast training step: skip (CPU bf16 autocast needs AVX-512 BF16)"
    m = make_trainer("grpo", "sync", args, ["train.autocast=bf16"]).train_step()
    assert torch.isfinite(torch.tensor(float(m["loss/total"]))), m["loss/total"]
    return f"engine ok; autocast bf16 step loss {float(m['loss/total']):.4f}"


# ----------------------------------------------------------------------------- step times


def make_trainer(config: str, scheduler: str, args, extra=()):
    from ibtpo.config import load_config, resolve_config_path
    from ibtpo.training.trainer import Trainer

    out = Path(args.tmp) / f"{config}-{scheduler}-{len(extra)}"
    sizes = (["train.prompts_per_step=2", "sampling.max_new_tokens=8", "rollout.rounds=3",
              "train.init=nano"] if args.smoke else ["train.init=tiny"])
    overrides = [f"model.device={args.device}", f"rollout.scheduler={scheduler}",
                 f"train.out_dir={out}", "train.tensorboard=false", *sizes, *extra]
    return Trainer(load_config([resolve_config_path(config)], overrides), progress=False)


TRAINERS = {"GRPO": ("grpo", "sync", ()), "IB-TPO sync": ("ibtpo", "sync", ()),
            "IB-TPO continuous": ("ibtpo", "continuous", ()),
            "IB-TPO continuous + KV reuse": ("ibtpo", "continuous",
                                             ("rollout.prefix_cache_mb=4096",))}


def step_times(args) -> list[list[str]]:
    """Rows of the step-time table: medians over alternating timed steps."""
    trainers = {name: make_trainer(c, s, args, extra) for name, (c, s, extra) in TRAINERS.items()}
    rows = {name: [] for name in trainers}
    for step in range(args.steps + (0 if args.smoke else 1)):
        for name, trainer in trainers.items():
            sync()
            m = trainer.train_step()
            sync()
            if step or args.smoke:
                rows[name].append(m)
    med = {name: {"step": statistics.median(r["time/step_s"] for r in rs),
                  "rollout": statistics.median(r["time/rollout_s"] for r in rs),
                  "tokens": statistics.median(r["rollout/generated_tokens"] for r in rs),
                  "per_1k": statistics.median(1000 * r["time/step_s"]
                                              / max(r["rollout/generated_tokens"], 1)
                                              for r in rs)}
           for name, rs in rows.items()}
    table = [[name, f"{m['step']:.3f}", f"{m['rollout']:.3f}", f"{m['tokens']:.0f}",
              f"{m['per_1k']:.3f}", f"{m['per_1k'] / med['GRPO']['per_1k']:.2f}"]
             for name, m in med.items()]
    return table


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- the table


CHECKS = {"pytest": check_pytest, "engine": check_engine, "scheduler": check_scheduler,
          "flex": check_flex, "bf16": check_bf16}


def run_check(fn, args) -> list[str]:
    t0 = time.perf_counter()
    try:
        detail = fn(args)
        status = "skip" if detail.startswith("skip") else "ok"
    except Exception as e:  # noqa: BLE001  (a failed check is a row, not the end of the run)
        traceback.print_exc()
        status, detail = "FAIL", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return [status, f"{time.perf_counter() - t0:.1f}", detail.replace("|", "/")]


def device_line(args) -> str:
    if args.device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    return f"{name}, torch {torch.__version__}{' (smoke mode)' if args.smoke else ''}"


def markdown(args, checks: dict, times: list[list[str]]) -> str:
    lines = [f"# GPU check: {device_line(args)}", "",
             "| check | status | s | detail |", "|---|---|---|---|"]
    lines += [f"| {name} | {' | '.join(row)} |" for name, row in checks.items()]
    lines += ["", f"Step times ({'nano, smoke sizes' if args.smoke else 'tiny preset'}; "
              f"medians of {args.steps} alternating timed steps):", "",
              "| trainer | s/step | rollout s | generated tokens | s per 1k tokens | "
              "vs GRPO (P4) |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in times]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import tempfile

    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp
        checks = {name: run_check(fn, args) for name, fn in CHECKS.items()}
        t0 = time.perf_counter()
        try:
            times = step_times(args)
            checks["step times"] = ["ok", f"{time.perf_counter() - t0:.1f}", "table below"]
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            times = []
            checks["step times"] = ["FAIL", f"{time.perf_counter() - t0:.1f}",
                                    f"{type(e).__name__}: {e}".splitlines()[0]]
    text = markdown(args, checks, times)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text + f"\nwrote {args.out}")
    return 1 if any(row[0] == "FAIL" for row in checks.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
