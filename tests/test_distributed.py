"""Data parallel: 2 CPU processes under `accelerate launch` against 1 process; metric reduction."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ibtpo.config import BUILTIN_CONFIGS, ConfigError, resolve_config_path
from ibtpo.metrics import read_metrics
from ibtpo.training.checkpoint import latest_checkpoint, load_state
from ibtpo.training.distributed import combine, reduction_of

WORKER = Path(__file__).parent / "_dp_worker.py"
ACCELERATE_CONFIGS = BUILTIN_CONFIGS / "accelerate"


def launch_two(out: Path, init: Path) -> subprocess.CompletedProcess:
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [str(accelerate), "launch", "--config_file", str(ACCELERATE_CONFIGS / "cpu.yaml"),
           str(WORKER), str(out), str(init), "--loop"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def runs(warm_checkpoint, tmp_path_factory):
    """(one-process results, two-process results, two-process output dir)."""
    sys.path.insert(0, str(WORKER.parent))
    import _dp_worker

    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched rank: the same float summation order in matmuls
    try:
        _dp_worker.fixed_tree_steps(one, str(warm_checkpoint))
    finally:
        torch.set_num_threads(threads)
    done = launch_two(two, warm_checkpoint)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(one / "steps.pt"), torch.load(two / "steps.pt"), two


def test_two_processes_make_the_one_process_update(runs):
    """Same prompts, same trees, three steps (one per aggregation mode, steps 2-3 with
    micro-batches of 3 rows): the all-reduced gradients and the weights after each step equal the
    one-process ones up to float summation order. Tolerance: gradients rtol 1e-4 / atol 1e-7,
    weights atol 1e-6 (lr 1e-3: 0.1% of one Adam step). Measured max differences: 1.8e-7 on
    gradients whose largest entries are ~0.1, and 6e-8 on weights (one float32 ulp at 0.5)."""
    one, two, out = runs
    assert [json.loads((out / f"rank-{r}.json").read_text())["prompts"] for r in (0, 1)] == [6, 6]
    for step, (a, b) in enumerate(zip(one, two), start=1):
        for ga, gb in zip(a["grads"], b["grads"]):
            assert torch.allclose(ga, gb, rtol=1e-4, atol=1e-7), (step, (ga - gb).abs().max())
        for pa, pb in zip(a["params"], b["params"]):
            assert torch.allclose(pa, pb, rtol=0, atol=1e-6), (step, (pa - pb).abs().max())
        ma, mb = a["metrics"], b["metrics"]
        for key in ("rollout/generated_tokens", "rollout/num_trajectories", "rollout/prompts",
                    "train/generated_tokens"):
            assert ma[key] == mb[key], (step, key)
        assert mb["rollout/prompts"] == 4
    # one micro-batch per rank: the rank-weighted loss is the global loss
    assert one[0]["metrics"]["loss/total"] == pytest.approx(two[0]["metrics"]["loss/total"],
                                                            rel=1e-5, abs=1e-7)
    moved = sum((p1 - p0).abs().sum() for p0, p1 in zip(one[0]["params"], one[2]["params"]))
    assert moved > 0  # the steps did change the weights


def test_two_process_loop_logs_and_checkpoints_once_and_resumes(runs):
    _, _, out = runs
    loop = out / "loop"
    assert [r["step"] for r in read_metrics(loop)] == [0, 1, 2, 3]
    rows = read_metrics(loop)
    assert all(r["rollout/prompts"] == 4 for r in rows[1:])
    state = load_state(latest_checkpoint(loop) / "trainer_state.pt")
    assert state["step"] == 3 and state["world_size"] == 2 and len(state["rng"]) == 2
    assert state["generated_tokens"] == rows[-1]["train/generated_tokens"]


def test_metric_reduction_rules():
    # rank 0: 2 prompts, 8 trajectories, 30% of the loss denominator; rank 1: 2, 4, 70%
    rows = [({"rollout/generated_tokens": 100.0, "rollout/num_trajectories": 8.0,
              "rollout/reward_mean": 0.5, "rollout/eff_rate": 1.0, "loss/total": 2.0,
              "time/step_s": 1.0, "rollout/trajectories_per_1k_tokens": 80.0},
             {"prompts": 2, "traj": 8, "loss": 0.3}),
            ({"rollout/generated_tokens": 300.0, "rollout/num_trajectories": 4.0,
              "rollout/reward_mean": 0.25, "rollout/eff_rate": 0.0, "loss/total": 1.0,
              "time/step_s": 3.0, "rollout/trajectories_per_1k_tokens": 13.3},
             {"prompts": 2, "traj": 4, "loss": 0.7})]
    out = combine(rows)
    assert out["rollout/generated_tokens"] == 400 and out["rollout/num_trajectories"] == 12
    assert out["rollout/reward_mean"] == pytest.approx((0.5 * 8 + 0.25 * 4) / 12)  # 5/12
    assert out["rollout/eff_rate"] == pytest.approx(0.5)  # per prompt
    assert out["loss/total"] == pytest.approx(0.3 * 2.0 + 0.7 * 1.0)  # 1.3
    assert out["time/step_s"] == 3.0  # the slowest rank
    assert out["rollout/trajectories_per_1k_tokens"] == pytest.approx(1000 * 12 / 400)  # 30
    assert reduction_of("train/grad_norm") == "max" and reduction_of("adv/mean") == "prompts"


def test_accelerate_configs_are_valid_and_not_training_configs():
    from accelerate.commands.config.config_args import load_config_from_file

    found = {p.stem: load_config_from_file(str(p)) for p in ACCELERATE_CONFIGS.glob("*.yaml")}
    assert {k: (c.distributed_type.value, c.num_machines) for k, c in found.items()} == {
        "one_gpu": ("NO", 1), "multi_gpu": ("MULTI_GPU", 1), "multi_node": ("MULTI_GPU", 2),
        "fsdp": ("FSDP", 1), "fsdp2_bf16": ("FSDP", 1), "cpu": ("MULTI_GPU", 1)}
    assert found["fsdp"].fsdp_config["fsdp_version"] == 2
    with pytest.raises(ConfigError) as err:  # the training-config names are unchanged
        resolve_config_path("fsdp")
    assert "grpo, grpo_clip_higher" in str(err.value) and "fsdp" not in str(err.value).split(
        "(")[-1]
