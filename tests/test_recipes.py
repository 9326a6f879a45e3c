"""The paper's recipe as configs (qwen3_*_dapo.yaml, paper_eval.yaml, accelerate/fsdp2_bf16.yaml):
each resolves, the recipe trains 2 steps on a tiny chat model and data in DAPO-Math-17K's schema,
and `ibtpo eval` runs the benchmark list over local files in the benchmarks' schemas."""

import json

import pytest
import torch
import yaml

from ibtpo.config import BUILTIN_CONFIGS, load_config, resolve_config_path
from ibtpo.data import load_task
from ibtpo.evaluation import benchmark_sources, run_eval
from ibtpo.training.trainer import Trainer

RECIPES = ["qwen3_1p7b_dapo", "qwen3_8b_dapo"]


@pytest.mark.parametrize("name", RECIPES + ["paper_eval"])
def test_recipe_configs_resolve(name):
    cfg = load_config([resolve_config_path(name)])
    if name == "paper_eval":
        assert cfg.eval.k == 32 and cfg.task.reward == "math_verify"
        assert [n for n, _ in benchmark_sources(cfg.eval.datasets)] == [
            "math500", "aime24", "aime25", "amc23", "amc24"]
        return
    # the paper's settings (ALGORITHM.md §6 and the issue)
    assert (cfg.train.lr, cfg.loss.beta_kl, cfg.advantage.beta, cfg.advantage.lam) == \
        (1e-6, 0.001, 5.0, 0.1)
    s, r = cfg.sampling, cfg.rollout
    assert (s.temperature, s.top_p, s.top_k, s.max_new_tokens) == (0.7, 0.95, 20, 2048)
    assert (r.scorer, r.b0, r.rounds, r.k, r.bn) == ("ib", 4, 9, 1, 1)
    assert cfg.model.dtype == "bfloat16" and cfg.train.master_weights
    assert cfg.task.answer_column == "reward_model.ground_truth"


def test_every_recipe_setting_says_whose_it_is():
    """Each setting line of a recipe is marked [paper] or [ours]."""
    for name in RECIPES:
        for line in (BUILTIN_CONFIGS / f"{name}.yaml").read_text().splitlines():
            if line.startswith("  ") and ":" in line and not line.strip().startswith(("#", "-")):
                key = line.split(":")[0].strip()
                if key != "out_dir":
                    assert "[paper]" in line or "[ours]" in line, (name, line)


def test_fsdp2_accelerate_config_is_bf16_fsdp2_on_8_gpus():
    acc = yaml.safe_load((BUILTIN_CONFIGS / "accelerate" / "fsdp2_bf16.yaml").read_text())
    assert acc["distributed_type"] == "FSDP" and acc["num_processes"] == 8
    assert acc["mixed_precision"] == "bf16" and acc["fsdp_config"]["fsdp_version"] == 2


def dapo_rows(n: int = 12) -> list[dict]:
    """Rows in DAPO-Math-17K's schema: `prompt` a chat message list, the answer in
    `reward_model.ground_truth`, plus its other columns."""
    return [{"data_source": "math_dapo", "ability": "MATH",
             "prompt": [{"role": "user", "content": f"{a}+{b}=?"}],
             "reward_model": {"ground_truth": str(a + b), "style": "rule-lean"},
             "extra_info": {"index": f"id-{a}-{b}"}} for a in range(4) for b in range(3)][:n]


def test_the_recipe_trains_two_steps_on_dapo_schema(chat_checkpoint, tmp_path):
    data = tmp_path / "dapo.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in dapo_rows()))
    cfg = load_config([resolve_config_path("qwen3_1p7b_dapo")], [
        f"train.init={chat_checkpoint}", f"task.name={data}", f"train.out_dir={tmp_path / 'run'}",
        "task.eval_size=2", "eval.size=2", "eval.k=1", "sampling.max_new_tokens=16",
        "train.prompts_per_step=2", "train.steps=2", "train.eval_every=0", "train.ckpt_every=0",
        "train.tensorboard=false"])
    problems = load_task(cfg.task).eval_set()
    assert problems[0].prompt.endswith("=?") and problems[0].answer.isdigit()
    trainer = Trainer(cfg, progress=False)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    last = trainer.train()
    # G = 4 + 8 where a tree can branch; the untrained model often answers in one step, and
    # the recipe does not branch from the root, so a tree has 4 to 12 trajectories
    assert trainer.step == 2 and 2 * 4 <= last["rollout/num_trajectories"] <= 2 * 12
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}  # master weights
    moved = [not torch.equal(b, p) for b, p in zip(before, trainer.model.parameters())]
    assert sum(moved) > 0.9 * len(moved)  # lr 1e-6 moves fp32 master weights


def benchmark_files(tmp_path):
    """Two tiny benchmarks in the real ones' schemas: MATH-500 (problem / answer / solution)
    and AIME 2025 as some copies write it (question / answer, integer answers)."""
    math500 = tmp_path / "math500.jsonl"
    math500.write_text("".join(json.dumps({"problem": f"{a}+{a}=?", "answer": str(2 * a),
                                           "solution": f"{a}+{a}={2 * a}", "level": 1}) + "\n"
                               for a in range(3)))
    aime = tmp_path / "aime25.jsonl"
    aime.write_text("".join(json.dumps({"question": f"{a}+1=?", "answer": a + 1, "id": a}) + "\n"
                            for a in range(2)))
    return math500, aime


def test_eval_runs_every_benchmark_into_one_table(chat_checkpoint, tmp_path, capsys):
    math500, aime = benchmark_files(tmp_path)
    cfg = load_config([resolve_config_path("paper_eval")], [
        f"eval.datasets=['math500={math500}', 'aime25={aime}']", "task.prompt_template={prompt}",
        "sampling.max_new_tokens=8", "eval.k=4", "eval.batch_size=64"])
    result = run_eval(cfg, str(chat_checkpoint), str(tmp_path / "bench.json"))
    assert list(result["benchmarks"]) == ["math500", "aime25"]
    m, a = result["benchmarks"]["math500"], result["benchmarks"]["aime25"]
    assert (m["count"], a["count"]) == (3, 2)  # every row, both schemas
    for row in (m, a):
        assert {"pass@1", "avg@4", "pass@4", "sampled_pass@4"} <= set(row)
        assert row["pass@4"] == pytest.approx(row["sampled_pass@4"])  # same estimator at j = k
    assert result["mean"]["avg@4"] == pytest.approx((m["avg@4"] + a["avg@4"]) / 2)
    assert result["mean"]["count"] == 5
    out = capsys.readouterr().out
    assert "math500" in out and "aime25" in out and "mean" in out and "avg@4" in out
    assert json.loads((tmp_path / "bench.json").read_text())["benchmarks"]["aime25"]["count"] == 2


def test_bad_benchmark_entry_names_the_field():
    with pytest.raises(ValueError, match="eval.datasets.*NAME=SOURCE"):
        benchmark_sources(["math500"])
    with pytest.raises(ValueError, match="names must differ"):
        benchmark_sources(["a=x.jsonl", "a=y.jsonl"])
