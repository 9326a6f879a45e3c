"""Compare: equal generated-token budgets, the table, the plots, and its input errors."""

import json

import pytest

from ibtpo.cli import main
from ibtpo.compare import outcome_table, run_compare, summarise_run
from ibtpo.config import ConfigError, resolve_config_path
from ibtpo.provenance import code_version

EASY = ["task.terms=[2]", "task.max_operand=9", "task.eval_size=30", "sampling.max_new_tokens=24",
        "eval.size=10", "eval.k=1", "train.tensorboard=false", "train.prompts_per_step=4"]


def test_compare_runs_every_config_to_the_same_token_budget(warm_checkpoint, tmp_path):
    configs = [resolve_config_path("grpo"), resolve_config_path("ibtpo")]
    table, _, _ = run_compare(configs, overrides=EASY + [f"train.init={warm_checkpoint}"],
                              seeds=1, out_dir=tmp_path, token_budget=1500, progress=False)
    results = json.loads((tmp_path / "compare.json").read_text())
    assert set(results) == {"grpo", "ibtpo"}
    for name, runs in results.items():
        run = runs[0]
        # stops at the first step that reaches the budget: 4 prompts x <= 12 trajectories x <= 24
        # tokens per step bound the overshoot
        assert 1500 <= run["generated_tokens"] < 1500 + 4 * 12 * 24
        assert run["init_pass@1"] == results["grpo"][0]["init_pass@1"]  # same warm start
    assert results["ibtpo"][0]["rollout/trajectories_per_prompt"] == 12
    assert results["grpo"][0]["rollout/trajectories_per_prompt"] == 8
    assert results["ibtpo"][0]["expected_G"] == 12 and results["grpo"][0]["expected_G"] == 8
    assert "| grpo | 1 |" in table and "| ibtpo | 1 |" in table
    # both runs start from the warm-up's weights, and the report names them
    warm = json.loads((warm_checkpoint / "ibtpo.json").read_text())["final_eval"]["fingerprint"]
    for runs in results.values():
        assert runs[0]["init_fingerprint"]["weights"] == warm["weights"]
        assert runs[0]["fingerprint"]["weights"] != warm["weights"]  # trained
    assert f"Warm-up fingerprint: weights {warm['weights']}, kernels portable (" in table
    assert (tmp_path / "compare.png").stat().st_size > 10_000
    assert (tmp_path / "compare.md").read_text().startswith(
        "# Comparison at 1,500 generated tokens")
    # a second comparison reuses the finished runs (same config) instead of training again
    mtime = (tmp_path / "grpo" / "seed0" / "metrics.jsonl").stat().st_mtime_ns
    again, _, _ = run_compare(configs, overrides=EASY + [f"train.init={warm_checkpoint}"],
                              seeds=1, out_dir=tmp_path, token_budget=1500, progress=False)
    assert again == table
    assert (tmp_path / "grpo" / "seed0" / "metrics.jsonl").stat().st_mtime_ns == mtime


def test_summary_and_table_from_hand_written_rows():
    rows = [{"step": 0, "train/step": 0, "eval/pass@1": 0.5, "eval/avg@k": 0.4},
            {"step": 1, "train/step": 1, "train/generated_tokens": 100, "rollout/eff_rate": 0.5,
             "rollout/reward_mean": 0.25},
            {"step": 2, "train/step": 2, "train/generated_tokens": 220, "rollout/eff_rate": 1.0,
             "rollout/reward_mean": 0.75, "eval/pass@1": 0.7, "eval/avg@k": 0.6}]
    s = summarise_run(rows)
    assert (s["pass@1"], s["init_pass@1"], s["steps"], s["generated_tokens"]) == (0.7, 0.5, 2, 220)
    assert s["rollout/eff_rate"] == 0.75 and s["rollout/reward_mean"] == 0.5
    a = [{**s, "wall_s": 3.0}, {**s, "pass@1": 0.6, "wall_s": 3.0}]
    b = [{**s, "wall_s": 1.0}, {**s, "pass@1": 0.9, "wall_s": 2.0}]
    table = outcome_table({"a": a, "b": b}, baseline="a")
    # a: mean(0.7, 0.6) = 0.65, sd 0.0707, t_1 12.706 / sqrt(2) -> half-width 0.635
    assert "| a | 2 | 0.650 ± 0.635 | — |" in table
    # b: 0.8 ± 12.706 * 0.1414 / sqrt(2) = 1.271; paired differences 0.0, 0.3 -> mean 15 pt,
    # sd 21.21 pt -> half-width 12.706 * 21.21 / sqrt(2) = 190.6 pt
    assert "| b | 2 | 0.800 ± 1.271 | +15.0 ± 190.6 |" in table


def test_compare_needs_a_budget_and_one_warm_start(tmp_path):
    with pytest.raises(ConfigError) as err:
        run_compare([resolve_config_path("grpo"), resolve_config_path("ibtpo")],
                    overrides=["train.init=a"], out_dir=tmp_path, seeds=0)
    assert "train.token_budget" in str(err.value) and "--seeds: got 0 for grpo" in str(err.value)
    other = tmp_path / "other.yaml"
    other.write_text("train: {init: elsewhere, token_budget: 1000}\n")
    assert main(["compare", "grpo", str(other), "--out", str(tmp_path)]) == 2


def test_band_interpolates_on_the_token_grid_and_averages_seeds():
    import numpy as np

    from ibtpo.compare import band

    # two seeds of an evaluation metric (not smoothed): seed A 0.2 -> 0.6 over 0..100 tokens,
    # seed B 0.4 -> 0.4; at 50 tokens A = 0.4, so the mean is 0.4 with zero spread
    a = [{"train/generated_tokens": 0, "eval/pass@1": 0.2},
         {"train/generated_tokens": 100, "eval/pass@1": 0.6}]
    b = [{"train/generated_tokens": 0, "eval/pass@1": 0.4},
         {"train/generated_tokens": 100, "eval/pass@1": 0.4}]
    mean, half = band([a, b], "eval/pass@1", np.array([0.0, 50.0, 100.0, 150.0]))
    assert mean[:3] == pytest.approx([0.3, 0.4, 0.5])
    # at 0: values 0.2, 0.4 -> sd 0.1414, t_1 12.706 / sqrt(2) -> 1.2706, clipped to 0.3 so that
    # the band of a share stays inside [0, 1]
    assert half[0] == pytest.approx(0.3) and half[1] == pytest.approx(0.0)
    assert np.isnan(mean[3])  # past every run's last point: no value, not an extrapolation


def test_band_ends_where_the_shortest_seed_ends_and_stays_in_range():
    import numpy as np

    from ibtpo.compare import band, metric_range

    # seed A runs to 100 tokens, seed B to 200: beyond 100 a mean would be B's alone
    a = [{"train/generated_tokens": 0, "eval/pass@1": 0.9},
         {"train/generated_tokens": 100, "eval/pass@1": 0.9}]
    b = [{"train/generated_tokens": 0, "eval/pass@1": 0.1},
         {"train/generated_tokens": 200, "eval/pass@1": 0.1}]
    mean, half = band([a, b], "eval/pass@1", np.array([0.0, 100.0, 150.0]))
    assert mean[:2] == pytest.approx([0.5, 0.5]) and np.isnan(mean[2])
    assert (mean[:2] - half[:2] >= 0).all() and (mean[:2] + half[:2] <= 1).all()
    assert metric_range("policy/entropy") == (0.0, float("inf"))
    assert metric_range("tree/cov_root") == (float("-inf"), float("inf"))


def test_plot_curves_draws_no_panel_without_data(tmp_path):
    from ibtpo.compare import plot_curves

    rows = [{"train/generated_tokens": t, "eval/pass@1": 0.5} for t in (0, 100)]
    plot_curves({"grpo": [rows]}, tmp_path / "none.png", keys=("tree/ib_score_root",))
    assert not (tmp_path / "none.png").exists()  # nothing to draw: no empty figure
    plot_curves({"grpo": [rows]}, tmp_path / "one.png", keys=("eval/pass@1", "tree/cov_root"))
    assert (tmp_path / "one.png").stat().st_size > 0


def test_equal_steps_and_committed_records_reused_only_when_current(warm_checkpoint, tmp_path,
                                                                    monkeypatch):
    """`steps`: every run trains 3 optimizer steps whatever its tokens; each run writes a record
    that a comparison in another out_dir reuses, and reruns once the code version differs."""
    configs = [resolve_config_path("grpo"), resolve_config_path("ibtpo")]
    kw = dict(overrides=EASY + [f"train.init={warm_checkpoint}", "eval.k=4"], seeds=1,
              steps=3, progress=False, record_dir=tmp_path / "records")
    table, results, _ = run_compare(configs, out_dir=tmp_path / "a", **kw)
    assert [r[0]["steps"] for r in results.values()] == [3, 3]
    tokens = {name: r[0]["generated_tokens"] for name, r in results.items()}
    assert tokens["grpo"] != tokens["ibtpo"]  # equal steps, other token counts, both reported
    assert "Every run: 3 optimizer steps (equal prompts" in table
    assert "pass@4 (T>0)" in table
    record = json.loads((tmp_path / "records" / "ibtpo" / "seed0.json").read_text())
    assert record["code_version"] == code_version() and len(record["code_version"]) == 16
    assert record["config"]["train"]["steps"] == 3 and "init" not in record["config"]["train"]
    assert record["init_weights"] == results["ibtpo"][0]["init_fingerprint"]["weights"]
    # another out_dir (another machine's clone): the records are reused, nothing trains
    again, results2, _ = run_compare(configs, out_dir=tmp_path / "b", **kw)
    assert again == table and not (tmp_path / "b" / "grpo").exists()
    assert results2["ibtpo"][0]["sampled_pass@4"] == results["ibtpo"][0]["sampled_pass@4"]
    # other code: the records are stale, the runs train again and replace them
    monkeypatch.setattr("ibtpo.compare.code_version", lambda: "0123456789abcdef")
    run_compare(configs, out_dir=tmp_path / "c", **kw)
    assert (tmp_path / "c" / "grpo" / "seed0" / "metrics.jsonl").is_file()
    record = json.loads((tmp_path / "records" / "ibtpo" / "seed0.json").read_text())
    assert record["code_version"] == "0123456789abcdef"


def test_a_run_stopped_by_a_signal_is_neither_summarised_nor_recorded(warm_checkpoint, tmp_path,
                                                                      monkeypatch):
    """SIGTERM ends the trainer's loop early and normally; compare must not take that run for a
    finished one (a record of it would be reused as if complete)."""
    from ibtpo.compare import SUMMARY_FILE, run_one
    from ibtpo.config import load_config
    from ibtpo.training.trainer import Trainer

    def stopped(self):
        self.stop.signum = 15
        return {}

    monkeypatch.setattr(Trainer, "train", stopped)
    cfg = load_config([resolve_config_path("grpo")], EASY + [
        f"train.init={warm_checkpoint}", f"train.out_dir={tmp_path / 'run'}",
        "train.token_budget=1000"])
    with pytest.raises(SystemExit) as exit_:
        run_one(cfg, progress=False, record=tmp_path / "rec.json")
    assert exit_.value.code == 143
    assert not (tmp_path / "rec.json").exists() and not (tmp_path / "run" / SUMMARY_FILE).exists()


def test_a_record_without_a_field_added_since_matches_only_at_its_default():
    """A config field added to the code after a record was written agrees with the record when
    today's value is the field's default (the code-version check vouches for the default);
    every other difference, a field the record has and today's code does not included, is
    stale."""
    from ibtpo.compare import _portable_config, same_config
    from ibtpo.config import Config, load_config

    today = _portable_config(load_config([resolve_config_path("ibtpo")]))
    assert same_config(today, today)
    older = json.loads(json.dumps(today))
    del older["train"]["mini_batches"]  # a record from before train.mini_batches existed
    assert Config().train.mini_batches == 1 == today["train"]["mini_batches"]
    assert same_config(older, today)
    assert not same_config(older, {**today, "train": {**today["train"], "mini_batches": 4}})
    assert not same_config({**older, "gone": {"x": 1}}, today)  # a section since removed
    assert not same_config({**today, "train": {**today["train"], "old_field": 1}}, today)
    assert not same_config({**today, "train": {**today["train"], "lr": 1.0}}, today)


def test_g_column_reads_as_trajectories_with_the_seeds_range_and_the_asked_g():
    """G was '4.500 ± 6.353' (a 2-seed t-interval: 12.706 * 0.707 / sqrt(2)); now one decimal,
    the seeds' lowest and highest, and the G of the config (B0 + (L-1)·K·Bn)."""
    from ibtpo.compare import G_KEY, rollout_table

    table = rollout_table({"ibtpo": [{G_KEY: 4.0, "expected_G": 12},
                                     {G_KEY: 5.0, "expected_G": 12}],
                           "grpo": [{G_KEY: 8.0, "expected_G": 8}] * 2})
    assert "| ibtpo | 4.5 [4.0–5.0] of 12 |" in table
    assert "| grpo | 8.0 of 8 |" in table  # every seed the same: no range
    assert "6.353" not in table and "G: trajectories per prompt" in table
