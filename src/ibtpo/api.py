"""The Python API: a user's model, data and reward function in a few lines (as TRL's quickstart).

    import ibtpo

    def correct(prompts, completions, answer, **columns):   # TRL's reward signature
        return [float(a in c) for c, a in zip(completions, answer)]

    trainer = ibtpo.make_trainer(model="models/SmolLM2-135M-Instruct", dataset="data.jsonl",
                                 reward_funcs=correct, config="ibtpo",
                                 settings={"model.chat_template": True, "train.steps": 10})
    trainer.train()
    trainer.export("runs/final")     # plain HF checkpoint (LoRA merged)

`dataset` is what `task.name` takes (a .jsonl / .parquet path, "hf:NAME[:SPLIT]", "rg:TASK",
"arithmetic"), or the rows themselves: a list of dicts or a `datasets.Dataset` with the columns
`task.prompt_column` and `task.answer_column` (default "prompt", "answer"). `reward_funcs` is one
function or a list, combined with `reward_weights` (default equal); without it `task.reward` is
used. `settings` overrides config fields exactly as `--set` does. `eval_dataset` (TRL's name:
rows, or a source as `dataset` takes) is the held-out set; without it `task.eval_size` distinct
prompts of `dataset` are held out (`task.eval_share` of them for a dataset that has no more).
"""

from __future__ import annotations

from ibtpo.config import load_config, resolve_config_path
from ibtpo.data import load_task
from ibtpo.data.rewards import reward_set_of
from ibtpo.training.trainer import Trainer


def setting_text(key: str, value) -> str:
    """One override string 'section.key=value' (YAML spelling for booleans and lists)."""
    if isinstance(value, bool):
        value = "true" if value else "false"
    return f"{key}={value}"


def make_trainer(model: str, dataset=None, reward_funcs=None, config: str | list[str] = "ibtpo",
                 settings: dict | None = None, progress: bool = True,
                 reward_weights: list[float] | None = None, eval_dataset=None) -> Trainer:
    """A `Trainer` for `model` (a path, .gguf file, preset or hub name) on `dataset` with
    `reward_funcs` (and `reward_weights`), from the built-in or YAML `config`(s) and `settings`
    overrides; `eval_dataset` (rows or a source, as `dataset`) is the held-out set, when given,
    instead of a split of `dataset`."""
    if reward_funcs is not None and reward_weights:
        reward_funcs = reward_set_of(reward_funcs, reward_weights)
    configs = [config] if isinstance(config, str) else list(config)
    overrides = [f"train.init={model}"]
    if isinstance(dataset, str):
        overrides.append(f"task.name={dataset}")
    overrides += [setting_text(k, v) for k, v in (settings or {}).items()]
    cfg = load_config([resolve_config_path(c) for c in configs], overrides)
    rows = None if dataset is None or isinstance(dataset, str) else dataset
    task = (None if rows is None and eval_dataset is None
            else load_task(cfg.task, rows, eval_dataset))
    return Trainer(cfg, task=task, reward_funcs=reward_funcs, progress=progress)
