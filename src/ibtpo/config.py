"""Configuration: dataclasses are the single source of every default.

Each field is declared once, with its meaning, unit and valid values in ``metadata`` (rendered by
``ibtpo config --help``-style listings and checked by :func:`validate`). YAML files and
``--set section.field=value`` strings only override. Every problem found (unknown key, wrong type,
out-of-range value) is collected and raised together as one :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
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


def resolve_config_path(name: str) -> Path:
    """A file path, or the name of a built-in config (``ibtpo`` -> the packaged ibtpo.yaml)."""
    path = Path(name)
    if path.is_file():
        return path
    builtin = BUILTIN_CONFIGS / f"{path.stem}.yaml"
    if path.suffix in ("", ".yaml") and builtin.is_file() and len(path.parts) <= 2:
        return builtin
    known = ", ".join(sorted(p.stem for p in BUILTIN_CONFIGS.glob("*.yaml")))
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
    name: str = F("arithmetic", "dataset: 'arithmetic' (built-in), a .jsonl/.parquet file, "
                  "'hf:NAME_OR_DIR[:SPLIT]' (Hugging Face datasets) or 'rg:TASK' (reasoning-gym)")
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
    seed: int = F(0, "seed of the problem generator (splits are disjoint for any seed)", min=0)
    prompt_column: str = F("prompt", "dataset column of the prompt (a.b = field b of column a; "
                           "a list of chat messages gives its last user message)")
    answer_column: str = F("answer", "dataset column of the reference answer (a.b as above)")
    subset: str = F("", "Hugging Face dataset configuration, e.g. 'main' for openai/gsm8k")
    prompt_template: str = F("", "datasets: str.format template of the prompt over the row's "
                             "columns, {prompt} = the prompt column ('' = the prompt as it is)")
    max_bad_fraction: float = F(0.01, "share of unusable dataset rows that stops the run (each "
                                "skipped row is reported with its line or index)", min=0.0, max=1.0)
    size: int = F(2000, "problems generated for a reasoning-gym task (held-out ones included)",
                  min=2)
    reward: str = F("arithmetic", "verifier(s), comma-separated: arithmetic | numeric | gsm8k | "
                    "math_verify | reasoning_gym, or module:function / file.py:function with TRL's "
                    "signature f(prompts, completions, **columns) -> list[float | None]")
    reward_weights: list[float] = F([], "weight of each `reward` entry (empty = equal); the reward "
                                    "is their weighted mean, each in [0, 1]")
    reward_errors: str = F("unscorable", "a reward function that raises: 'unscorable' (log the "
                           "prompt and error, score the trajectory None) or 'stop' (end the run)",
                           choices=("unscorable", "stop"))


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
    warmup_steps: int = F(5, "linear learning-rate warm-up steps, then constant (Adam's first "
                          "steps move every weight by ~lr)", min=0)
    weight_decay: float = F(0.0, "AdamW weight decay", min=0.0)
    num_iterations: int = F(1, "passes over each step's batch (PPO epochs)", min=1)
    mini_batches: int = F(1, "optimizer steps per rollout batch: the step's trees are split into "
                          "this many mini-batches of whole trees, one update each (verl's "
                          "train_batch_size / ppo_mini_batch_size, TRL's steps_per_generation); "
                          "old log-probs, reference and advantages come from the rollout, so the "
                          "ratio leaves 1 from the second; 1 = on-policy", min=1)
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
    out_dir: str = F("runs/train", "output directory (metrics.jsonl, tensorboard, checkpoints)")
    seed: int = F(0, "seed of prompts, sampling and tie-breaking", min=0)
    tensorboard: bool = F(True, "also write TensorBoard event files")
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
    k: int = F(4, "samples per problem for avg@k and the sampled pass@1/2/4/8/16 up to k",
               min=1)
    temperature: float = F(1.0, "temperature of the avg@k samples", min=0.0, min_exclusive=True)
    batch_size: int = F(256, "sequences generated together", min=1)
    seed: int = F(0, "seed of the avg@k samples", min=0)


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


def _merge(cfg: Config, data: Any, source: str, problems: list[str]) -> None:
    if not isinstance(data, dict):
        problems.append(f"{source}: expected a mapping of sections, got {type(data).__name__}")
        return
    sections = {f.name: f for f in dataclasses.fields(cfg)}
    for sec_name, values in data.items():
        if sec_name not in sections:
            problems.append(f"{source}: unknown section {sec_name!r} "
                            f"(valid: {', '.join(sections)})")
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
            problems.append(f"{source}: unknown key {name!r} (valid: {', '.join(hints)})")
        elif not _type_ok(value, hints[key]):
            problems.append(f"{name}: got {value!r}, expected {_type_name(hints[key])}")
        else:
            setattr(section, key, float(value) if hints[key] is float else value)


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
    n_rewards = len([r for r in t.reward.split(",") if r.strip()])
    if not n_rewards:
        problems.append("task.reward: expected at least one reward name or module:function")
    if t.reward_weights and (len(t.reward_weights) != n_rewards or min(t.reward_weights) < 0
                             or sum(t.reward_weights) <= 0):
        problems.append(f"task.reward_weights: got {t.reward_weights!r}, expected {n_rewards} "
                        "non-negative weights (one per task.reward entry) with a positive sum")
    r = cfg.rollout
    if 0 < r.token_budget < r.b0 * cfg.sampling.max_new_tokens:
        problems.append(f"rollout.token_budget: got {r.token_budget}, expected 0 (no limit) or at "
                        f"least b0 * sampling.max_new_tokens = {r.b0 * cfg.sampling.max_new_tokens}"
                        " (the initial chains must fit)")
    if not cfg.rollout.step_delimiter:
        problems.append("rollout.step_delimiter: expected a non-empty string")
    return problems


def parse_override(text: str, cfg: Config | None = None) -> dict:
    """'train.lr=1e-4' -> {'train': {'lr': 1e-4}}.

    The value is read as YAML (1e-4, true, [2, 3]), except for text fields, where it is kept as
    typed unless quoted (so ``rollout.step_delimiter="\\n"`` is a newline).
    """
    path, sep, raw = text.partition("=")
    section, dot, key = path.strip().partition(".")
    if not sep or not dot:
        raise ConfigError([f"--set {text!r}: expected section.key=value, e.g. train.lr=1e-4"],
                          "override")
    hints = _section_hints(type(getattr(cfg or Config(), section, None)))
    if hints.get(key) is str and not raw.strip().startswith(("'", '"')):
        return {section: {key: raw}}
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
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
        return yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError([f"{path}: not UTF-8 text (byte at offset {err.start}); expected a "
                           "YAML config file"]) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError([f"{where}: not valid YAML ({getattr(err, 'problem', err)})"]) from None


def load_config(paths: list[str | Path] = (), overrides: list[str] = (),
                base: dict | None = None) -> Config:
    """Defaults <- ``base`` dict <- YAML files in order <- ``--set`` overrides; then validate."""
    cfg, problems = Config(), []
    if base:
        _merge(cfg, base, "base", problems)
    for p in paths:
        _merge(cfg, load_yaml(p), str(p), problems)
    for text in overrides:
        _merge(cfg, parse_override(text, cfg), f"--set {text}", problems)
    problems += validate(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def describe() -> list[tuple[str, Any, str]]:
    """(field, default, help) for every field: the documentation table of the README."""
    rows = []
    for sec in dataclasses.fields(Config):
        for f in dataclasses.fields(sec.default_factory()):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((f"{sec.name}.{f.name}", default, f.metadata["help"]))
    return rows
