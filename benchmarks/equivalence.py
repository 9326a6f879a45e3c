"""Do two versions of the code compute the same numbers? A probe that lets a study's committed
records survive a change that computes nothing differently (a refactor, a new option whose default
is the old behaviour), instead of rerunning hours of runs.

    .venv/bin/python benchmarks/equivalence.py             # each record's code vs today's
    .venv/bin/python benchmarks/equivalence.py --base REV  # git revision REV vs today's code

For every code version found in the committed records (results/runs/**/*.json) that today's code
does not accept yet, the commit that wrote them is checked out in a temporary git worktree (whose
code version must be the record's), and the same PROBES run under both trees, each in its own
process: short GRPO and IB-TPO runs from the testbed warm-up with the studies' evaluation settings,
on-policy and with off-policy mini-batches at a high learning rate, and on the Countdown testbed
(Study 5) where both trees have it. The versions count as the same
when every value a record keeps (`compare.RECORD_KEYS` and every eval/ key) is equal bit for bit at
every step and the final weights' digests are equal; a metric that only today's code logs is
listed, not counted against. The pair is then added to results/runs/equivalent.json, which the
studies read (`common.accepted_code`, `ibtpo.provenance.same_code`). The probe is evidence, not
proof: it covers the paths the studies run, not every option.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import COUNTDOWN, COUNTDOWN_WARMUP_DIR, EQUIVALENCE, RESULTS, ROOT, warmup
from ibtpo.provenance import code_version, git_commit, same_code

COMMON = ["train.token_budget=16000", "train.eval_every=0", "train.eval_every_tokens=8000",
          "eval.k=16", "task.eval_size=100", "train.tensorboard=false"]
PROBES = {"grpo_mb4_lr3e-4": ("grpo", ["train.lr=3e-4", "train.mini_batches=4"]),
          "ibtpo_mb4_lr3e-4": ("ibtpo", ["train.lr=3e-4", "train.mini_batches=4"]),
          "ibtpo_default": ("ibtpo", [])}
# Probes of the Countdown testbed (Study 5), from its warm-up: run only when both trees have the
# task (records older than it are arithmetic ones).
COUNTDOWN_PROBES = {"countdown_grpo_mb4_lr3e-4": ("grpo", COUNTDOWN + ["train.lr=3e-4",
                                                                       "train.mini_batches=4"]),
                    "countdown_ibtpo": ("ibtpo", COUNTDOWN)}
COUNTDOWN_FILE = Path("src/ibtpo/data/countdown.py")
# Run in a child process with PYTHONPATH = the tree under test (argv: config, out_dir, overrides).
SNIPPET = r"""
import json, sys
from ibtpo import kernels
kernels.pin("portable")
from ibtpo.compare import RECORD_KEYS, run_one
from ibtpo.config import load_config, resolve_config_path
name, out, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
cfg = load_config([resolve_config_path(name)], overrides + ["train.out_dir=" + out])
summary, rows = run_one(cfg, progress=False, reuse=False)
keep = [{k: v for k, v in r.items() if k in RECORD_KEYS or k.startswith("eval/")} for r in rows]
print("PROBE " + json.dumps({"weights": summary["fingerprint"]["weights"], "rows": keep}))
"""


def python_in(tree: Path, code: str, *args: str) -> str:
    """stdout of `code` run by this interpreter with `tree`'s package first on the path."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=tree, env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the probe failed under {tree}:\n{done.stderr[-3000:]}")
    return done.stdout


def tree_version(tree: Path) -> str:
    return python_in(tree, "from ibtpo.provenance import code_version; "
                           "print(code_version())").strip()


def probes_for(tree: Path) -> dict:
    """{probe name: (config, overrides)} that `tree` can run."""
    return {**PROBES, **(COUNTDOWN_PROBES if (tree / COUNTDOWN_FILE).is_file() else {})}


def probe(tree: Path, models: dict, scratch: Path) -> dict:
    """{probe name: {"weights": digest, "rows": recorded metric rows}} under `tree`; `models`:
    the warm-up of each testbed ({"arithmetic": path, "countdown": path})."""
    out = {}
    for name, (config, extra) in probes_for(tree).items():
        print(f"   {tree}: {name}", flush=True)
        model = models["countdown" if name in COUNTDOWN_PROBES else "arithmetic"]
        text = python_in(tree, SNIPPET, config, str(scratch / tree.name / name),
                         json.dumps([f"train.init={model}", *COMMON, *extra]))
        line = next(x for x in text.splitlines() if x.startswith("PROBE "))
        out[name] = json.loads(line[len("PROBE "):])
    return out


def differences(old: dict, new: dict) -> tuple[list[str], set[str]]:
    """(what differs, metrics only `new` logs) between two probes' outputs, over the probes
    both ran."""
    diffs, added = [], set()
    for name in (n for n in new if n in old):
        a, b = old[name], new[name]
        if a["weights"] != b["weights"]:
            diffs.append(f"{name}: final weights {a['weights']} vs {b['weights']}")
        if len(a["rows"]) != len(b["rows"]):
            diffs.append(f"{name}: {len(a['rows'])} vs {len(b['rows'])} logged rows")
            continue
        for i, (ra, rb) in enumerate(zip(a["rows"], b["rows"])):
            added |= set(rb) - set(ra)
            bad = sorted(k for k in ra if json.dumps(rb.get(k, "missing")) != json.dumps(ra[k]))
            if bad:
                diffs.append(f"{name}: row {i}: {', '.join(bad[:5])} differ")
                break
    return diffs, added


def record_versions() -> dict[str, str]:
    """{code version: a git commit that wrote records of it} over the committed records."""
    found = {}
    for path in sorted((RESULTS / "runs").rglob("*.json")):
        if path == EQUIVALENCE:
            continue
        record = json.loads(path.read_text())
        version, commit = record.get("code_version"), record.get("git_commit") or ""
        if version and (version not in found or found[version].endswith("+dirty")):
            found[version] = commit
    return found


def add_pair(old: str, new: str, old_commit: str, probes: int, names: list[str]) -> None:
    data = json.loads(EQUIVALENCE.read_text()) if EQUIVALENCE.is_file() else {"pairs": []}
    data["pairs"].append({"old": old, "new": new, "old_commit": old_commit,
                          "new_commit": git_commit(), "date": datetime.date.today().isoformat(),
                          "probes": sorted(names), "rows_compared": probes,
                          "command": "benchmarks/equivalence.py"})
    EQUIVALENCE.parent.mkdir(parents=True, exist_ok=True)
    tmp = EQUIVALENCE.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, EQUIVALENCE)


def check(rev: str, version: str | None, models: dict, today: dict, scratch: Path) -> bool:
    """Probe `rev` against today's probe output; record the pair when they agree."""
    tree = scratch / f"base-{rev[:12]}"
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), rev], cwd=ROOT,
                   check=True)
    try:
        got = tree_version(tree)
        if version and got != version:
            print(f"== {rev[:12]}: its code version is {got}, not the records' {version}: "
                  "not checked (pass --base with the commit that wrote them)")
            return False
        theirs = probe(tree, models, scratch)
        diffs, added = differences(theirs, today)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT)
    if diffs:
        print(f"== {got} ({rev[:12]}) computes other numbers than today's code:\n   "
              + "\n   ".join(diffs))
        return False
    rows = sum(len(today[n]["rows"]) for n in theirs)
    add_pair(got, code_version(), rev, rows, list(theirs))
    print(f"== {got} ({rev[:12]}) = today's {code_version()}: {rows} logged rows and "
          f"{len(theirs)} final weights identical"
          + (f"; metrics only today's code logs: {', '.join(sorted(added))}" if added else "")
          + f"; written to {EQUIVALENCE.relative_to(ROOT)}")
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", help="a git revision to compare with today's code (default: the "
                                  "commits that wrote the committed records)")
    args = p.parse_args()
    accepted = same_code(EQUIVALENCE)
    todo = ({args.base: None} if args.base else
            {c.removesuffix("+dirty"): v for v, c in record_versions().items()
             if v not in accepted and c})
    if not todo:
        print(f"every committed record's code version is accepted by today's {code_version()}")
        return
    models = {"arithmetic": str(warmup()),
              "countdown": str(warmup(COUNTDOWN, COUNTDOWN_WARMUP_DIR))}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        print("== probing today's code", flush=True)
        today = probe(ROOT, models, scratch)
        for rev, version in todo.items():
            if version in same_code(EQUIVALENCE):  # linked meanwhile through another version
                continue
            results.append(check(rev, version, models, today, scratch))
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
