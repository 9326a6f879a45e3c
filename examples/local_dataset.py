"""Your own data and reward function, from Python (as TRL's GRPOTrainer quickstart).

    python examples/local_dataset.py                              # nano model, a demo dataset
    python examples/local_dataset.py --model models/SmolLM2-135M-Instruct --chat

The dataset is a JSONL file with a "prompt" and an "answer" column (any other column reaches the
reward function as a keyword argument, as in TRL). The reward function has TRL's signature and
returns one float in [0, 1] per completion (IB-TPO reads a reward as a success probability), or
None for an item it cannot score. A reward on another scale (TRL's -1 for a bad format) is
refused at its first scoring; `task.reward_transform=threshold` or `=rescale` maps it into [0, 1]
(README, "Your own model and data").
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

import ibtpo


def correct(prompts, completions, answer, **columns):
    """1.0 when the completion's last number is the reference answer, else 0.0."""
    out = []
    for completion, reference in zip(completions, answer):
        numbers = re.findall(r"-?\d+", completion)
        out.append(float(bool(numbers) and numbers[-1] == str(reference)))
    return out


def write_dataset(path: Path, n: int = 1000, seed: int = 0) -> Path:
    """A demo dataset: n two-term sums "a+b=?" with their answers, one JSON object a line."""
    rng = random.Random(seed)
    rows = [(rng.randint(1, 30), rng.randint(1, 30)) for _ in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": f"{a}+{b}=?", "answer": str(a + b),
                                        "difficulty": "easy"}) + "\n" for a, b in rows))
    return path


def main(model: str = "nano", data: str | None = None, out: str = "runs/example_local",
         settings: dict | None = None, progress: bool = True) -> dict:
    """Train `model` with IB-TPO on the JSONL file `data` (a demo file when None) with the reward
    `correct`; returns the last step's metrics."""
    data = data or str(write_dataset(Path(out) / "data.jsonl"))
    trainer = ibtpo.make_trainer(model=model, dataset=data, reward_funcs=correct,
                                 config="ibtpo", progress=progress,
                                 settings={"train.out_dir": f"{out}/run", "train.steps": 10,
                                           "task.eval_size": 100, "eval.size": 100,
                                           **(settings or {})})
    last = trainer.train()
    trainer.export(f"{out}/final")
    return last


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nano", help="checkpoint directory, .gguf or preset")
    parser.add_argument("--data", default=None, help="a JSONL file (default: a demo dataset)")
    parser.add_argument("--chat", action="store_true", help="wrap prompts in the chat template")
    parser.add_argument("--out", default="runs/example_local", help="output directory")
    args = parser.parse_args()
    last = main(args.model, args.data, args.out,
                {"model.chat_template": True} if args.chat else None)
    print(f"held-out pass@1 {last.get('eval/pass@1', float('nan')):.3f}; "
          f"policy in {args.out}/final")
