"""Progress: a live bar on a terminal, whole plain lines elsewhere or with "lines", or nothing."""

from __future__ import annotations

from ibtpo.progress import counted, progress_bar
from ibtpo.training.trainer import _bar_text


def run(enabled, capsys) -> list[str]:
    with progress_bar(enabled, 1043, unit="tokens", description="train") as bar:
        bar.update(500, "reward 0.25  eff 0.50  ib -0.041 " + "x" * 120)
        bar.update(1043, "reward 0.50")
    captured = capsys.readouterr()
    assert captured.out == ""  # standard output keeps a command's result
    return captured.err.splitlines()


def test_off_is_silent(capsys):
    assert run(False, capsys) == []


def test_not_a_terminal_gives_whole_lines_never_a_cut_bar(capsys):
    # capsys is not a terminal, as a CI log or a nohup file: every update is one whole line
    lines = run(True, capsys)
    assert len(lines) == 2 and lines[0].startswith("[train] 500/1,043 tokens  0:00:00  reward")
    assert lines[0].endswith("x" * 120) and "…" not in "".join(lines)
    assert lines[1].startswith("[train] 1,043/1,043 tokens")


def test_lines_mode_prints_every_update(capsys):
    assert run("lines", capsys) == run(True, capsys)


def test_counts_and_the_training_line_say_what_they_count():
    # the summary said "1 steps"; the line "reward 0.04 eff 0.12 ib -0.002 eval 0.00" named
    # none of its figures as docs/METRICS.md does
    assert [counted(n, "step") for n in (0, 1, 2, 1000)] == ["0 steps", "1 step", "2 steps",
                                                             "1,000 steps"]
    line = _bar_text({"rollout/reward_mean": 0.04, "rollout/eff_rate": 0.125,
                      "tree/ib_score": -0.002, "eval/pass@1": 0.5})
    assert line == "reward 0.04  eff_rate 0.12  ib_score -0.002  held-out pass@1 0.50"
