"""Config: defaults, YAML + --set overrides, one error listing every problem, CLI exit status 2."""

import subprocess
import sys

import pytest

from ibtpo.cli import main
from ibtpo.config import (
    Config,
    ConfigError,
    describe,
    load_config,
    parse_override,
    resolve_config_path,
)


def test_defaults_match_the_paper():
    cfg = load_config()
    assert (cfg.rollout.b0, cfg.rollout.rounds, cfg.rollout.k, cfg.rollout.bn) == (4, 9, 1, 1)
    assert (cfg.advantage.beta, cfg.advantage.lam) == (5.0, 0.1)
    assert (cfg.loss.eps_low, cfg.loss.eps_high, cfg.loss.beta_kl) == (0.2, 0.2, 0.001)
    assert cfg.rollout.step_delimiter == "\n\n"


def test_yaml_then_set_override_in_order(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("train: {lr: 0.5, steps: 7}\nrollout: {scorer: entropy}\n")
    b = tmp_path / "b.yaml"
    b.write_text("train: {steps: 9}\n")
    cfg = load_config([a, b], ["train.lr=1e-4", "task.terms=[2, 3]", "train.tensorboard=false"])
    assert cfg.train.lr == 1e-4 and cfg.train.steps == 9 and cfg.rollout.scorer == "entropy"
    assert cfg.task.terms == [2, 3] and cfg.train.tensorboard is False


def test_int_accepted_for_float_and_kept_as_float():
    cfg = load_config(overrides=["advantage.beta=2"])
    assert cfg.advantage.beta == 2.0 and isinstance(cfg.advantage.beta, float)


def test_text_fields_keep_the_typed_value_unless_quoted():
    assert parse_override("model.name_or_path=123") == {"model": {"name_or_path": "123"}}
    assert parse_override('rollout.step_delimiter="\\n"') == {"rollout": {"step_delimiter": "\n"}}


def test_every_problem_is_listed_once_with_its_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: fast, bogus: 1}\nnope: {}\nsampling: {top_p: 1.5}\n")
    with pytest.raises(ConfigError) as err:
        load_config([bad], ["rollout.scorer=best", "advantage.beta=0", "task.terms=[1, 3]"])
    problems = err.value.problems
    assert len(problems) == 7, problems
    text = str(err.value)
    for fragment in ("train.lr: got 'fast', expected float", "unknown key 'train.bogus'",
                     "unknown section 'nope'", "sampling.top_p: got 1.5, expected a value <= 1.0",
                     "rollout.scorer: got 'best', expected one of", "advantage.beta: got 0.0, "
                     "expected a value > 0.0", "task.terms: got [1, 3]"):
        assert fragment in text


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("train:\n  lr: 1\n  steps: [1\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+: not valid YAML"):
        load_config([bad])


def test_override_without_section_is_rejected():
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(overrides=["lr=1"])


def test_term_weights_must_match_terms():
    with pytest.raises(ConfigError, match="task.term_weights"):
        load_config(overrides=["task.terms=[2, 3]", "task.term_weights=[1.0]"])


def test_every_field_is_documented():
    rows = describe()
    assert len(rows) > 50 and all(help_text for _, _, help_text in rows)
    assert ("rollout.b0", 4) in [(n, d) for n, d, _ in rows]


def test_builtin_configs_load_and_differ_where_expected():
    grpo = load_config([resolve_config_path("grpo")])
    ibtpo = load_config([resolve_config_path("ibtpo")])
    assert grpo.rollout.scorer == "independent" and grpo.rollout.b0 == 8
    assert grpo.advantage.estimator == "grpo"
    assert ibtpo.rollout.scorer == "ib" and ibtpo.advantage.estimator == "ibtpo"
    names = [p.stem for p in resolve_config_path("grpo").parent.glob("*.yaml")]
    for name in names:  # every shipped config is valid
        load_config([resolve_config_path(name)])


def test_cli_bad_config_exits_2_without_traceback(capsys):
    code = main(["config", "--set", "train.lr=-1", "--set", "train.nope=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "train.lr: got -1.0, expected a value > 0.0" in err and "train.nope" in err
    assert "Traceback" not in err


def test_cli_unknown_config_name_lists_builtins(capsys):
    assert main(["config", "--config", "nosuch"]) == 2
    assert "ibtpo" in capsys.readouterr().err


def test_console_script_subprocess_exit_status(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ibtpo.cli", "train", "--set", "rollout.k=0"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "rollout.k: got 0, expected a value >= 1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_dump_roundtrips(tmp_path, capsys):
    assert main(["config", "--config", "grpo", "--set", "train.steps=3"]) == 0
    dumped = tmp_path / "dump.yaml"
    dumped.write_text(capsys.readouterr().out)
    cfg = load_config([dumped])
    assert cfg.train.steps == 3 and cfg.rollout.scorer == "independent"
    assert cfg == load_config([resolve_config_path("grpo")], ["train.steps=3"])
    assert isinstance(cfg, Config)


def test_yaml_exponent_floats_are_floats(tmp_path):
    # YAML 1.1 (PyYAML's default) reads 1e-6 (no dot) and 1.0e6 (no exponent sign) as text
    f = tmp_path / "paper.yaml"
    f.write_text("train:\n  lr: 1e-6\nsft: {lr: 3E-4}\nloss: {beta_kl: 1.0e3}\n"
                 "task: {reward: 'arithmetic,numeric', reward_weights: [2e0, 1e0]}\n")
    cfg = load_config([f])
    assert cfg.train.lr == 1e-6 and cfg.sft.lr == 3e-4 and cfg.loss.beta_kl == 1000.0
    assert cfg.task.reward_weights == [2.0, 1.0]
    assert load_config(overrides=["train.lr=1e-6"]).train.lr == 1e-6
    # text fields keep text; what was a string stays a string
    assert load_config(overrides=["train.out_dir=1e5"]).train.out_dir == "1e5"


def test_a_missing_config_path_is_an_error_not_the_builtin(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"mydir/grpo.yaml: no such file"):
        resolve_config_path("mydir/grpo.yaml")
    assert main(["config", "--config", "mydir/grpo.yaml"]) == 2
    assert "mydir/grpo.yaml: no such file" in capsys.readouterr().err
    # bare names still resolve to the built-ins, and an existing file wins over a built-in
    assert resolve_config_path("grpo").parent.name == "configs"
    assert resolve_config_path("grpo.yaml").parent.name == "configs"
    (tmp_path / "grpo.yaml").write_text("train: {steps: 3}\n")
    assert resolve_config_path("grpo.yaml") == tmp_path.joinpath("grpo.yaml").relative_to(tmp_path)


@pytest.mark.parametrize("setting, hint", [
    ("loss.beta=0.04", "loss.beta_kl"),  # TRL's beta is the KL weight, not advantage.beta
    ("train.beta=0.04", "loss.beta_kl"),
    ("loss.kl_coef=0.04", "loss.beta_kl"),
    ("train.num_generations=8", "rollout.b0"),
    ("train.max_completion_length=64", "sampling.max_new_tokens"),
    ("train.max_new_tokens=64", "sampling.max_new_tokens"),  # right field, wrong section
    ("rollout.scorrer=ib", "rollout.scorer"),
    ("loss.epsilon_high=0.28", "loss.eps_high"),
    ("train.steps_per_generation=4", "train.mini_batches"),
    ("trainer.lr=1e-4", "'train'"),  # a section
])
def test_unknown_keys_get_a_did_you_mean(setting, hint):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[setting])
    (problem,) = err.value.problems
    assert hint in problem, problem
    assert "advantage.beta is IB-TPO's" in problem or "beta" not in setting.split("=")[0]


def test_a_flat_trl_style_file_names_the_ibtpo_fields(tmp_path):
    f = tmp_path / "trl.yaml"
    f.write_text("beta: 0.04\nnum_generations: 8\n")
    with pytest.raises(ConfigError) as err:
        load_config([f])
    text = str(err.value)
    assert "unknown section 'beta'" in text and "loss.beta_kl" in text
    assert "unknown section 'num_generations'" in text and "rollout.b0" in text


def test_config_listing_shows_choices(capsys):
    assert main(["config"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "[one of: ib | entropy | random | width | independent]" in rows["rollout.scorer"]
    assert "[one of: float32 | bfloat16 | float16]" in rows["model.dtype"]
    assert "[one of: seq-mean-token-mean | token-mean" in rows["loss.agg_mode"]


def test_new_reward_fields_default_to_the_old_behaviour_and_are_checked():
    cfg = load_config()
    assert (cfg.task.reward_transform, cfg.task.reward_range) == ("none", [0.0, 1.0])
    with pytest.raises(ConfigError, match="task.reward_range"):
        load_config(overrides=["task.reward_range=[1, -1]"])


def test_the_trl_verl_page_names_only_real_fields():
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "FROM_TRL_VERL.md").read_text()
    fields = {name for name, _, _ in describe()}
    sections = {name.split(".")[0] for name in fields}
    named = {m for m in re.findall(r"`([a-z_]+\.[a-z_0-9]+)", page) if m.split(".")[0] in sections}
    assert {"loss.beta_kl", "advantage.beta", "rollout.b0", "sampling.max_new_tokens",
            "train.mini_batches"} <= named
    assert named <= fields, named - fields


def test_bare_trl_keys_and_verl_dotted_names_get_a_hint():
    # `--set learning_rate=1e-6` said only "expected section.key=value"; verl's dotted names
    # said "unknown section" with no word on what ibtpo calls them
    with pytest.raises(ConfigError, match=r"'learning_rate=1e-6': expected section.key=value.*"
                                          r"'learning_rate' is train.lr"):
        load_config(overrides=["learning_rate=1e-6"])
    with pytest.raises(ConfigError, match=r"'beta' is loss.beta_kl"):
        load_config(overrides=["beta=0.04"])
    with pytest.raises(ConfigError, match=r"unknown section 'actor_rollout_ref' .*; "
                                          r"actor_rollout_ref.actor.optim.lr \(did you mean "
                                          r"sft.lr or train.lr\?\)"):
        load_config(overrides=["actor_rollout_ref.actor.optim.lr=1e-6"])
    with pytest.raises(ConfigError, match=r"algorithm.kl_ctrl.kl_coef \(TRL/verl's 'kl_coef' is "
                                          r"loss.beta_kl"):
        load_config(base={"algorithm": {"kl_ctrl": {"kl_coef": 0.001}}})


def test_field_docs_say_what_warm_up_and_scheduler_promises_cover():
    """Issue 26 item 16: the warm-up counts optimizer steps (mini-batches shorten it in rollouts)
    and the continuous scheduler's "same trees" holds in fp32 only."""
    from ibtpo.config import describe

    docs = {name: text for name, _, text in describe()}
    assert "optimizer steps" in docs["train.warmup_steps"]
    assert "mini_batches = N" in docs["train.warmup_steps"]
    assert "warm-up N-fold" in docs["train.mini_batches"]
    assert "same trees in fp32" in docs["rollout.scheduler"]
    assert "16-bit autocast" in docs["rollout.scheduler"]
    assert "16-bit autocast" in docs["rollout.prefix_cache_mb"]
