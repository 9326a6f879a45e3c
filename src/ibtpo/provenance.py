"""What produced a result: the version of the code that computes a run's numbers.

`code_version()` is a short digest of the modules on the numeric path of a run (NUMERIC: the
core, rollout, training and data packages, and the modules of models, configs, seeds, kernels,
evaluation and metrics), read as syntax trees without docstrings: a comment, a docstring or the
layout of a line leaves it unchanged; any change to what the code computes (and, as a rule of
thumb, any change to those modules' code) changes it. A study reuses a committed run only when
its recorded code version is today's (`ibtpo.compare`), so results of other code never mix in.
`git_commit()` is recorded beside it for a reader, when the package runs from a git checkout.

A change that leaves every number as it was (a refactor, a new option at a default that computes
what the code did before) still changes the digest. `benchmarks/equivalence.py` shows such a
change by running the same probe runs under both versions and comparing every recorded value
and the final weights bit for bit; when they agree it writes the pair to an equivalence file,
and `same_code(file)` is the set of versions whose records count as today's.
"""

from __future__ import annotations

import ast
import hashlib
import json
import subprocess
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
NUMERIC = ("core", "rollout", "training", "data", "models.py", "config.py", "seeding.py",
           "kernels.py", "evaluation.py", "metrics.py")


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    """`tree` without the docstrings of its module, classes and functions."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return tree


def numeric_files(root: Path = PACKAGE) -> list[Path]:
    """The .py files of NUMERIC under `root`, sorted."""
    files = []
    for name in NUMERIC:
        path = root / name
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return sorted(files)


@lru_cache(maxsize=None)
def code_version(root: Path = PACKAGE) -> str:
    """16 hex digits of sha256 over (relative path, docstring-free syntax tree) of every numeric
    module."""
    digest = hashlib.sha256()
    for path in numeric_files(root):
        tree = _strip_docstrings(ast.parse(path.read_text(), filename=str(path)))
        digest.update(f"{path.relative_to(root).as_posix()}\n{ast.dump(tree)}\n".encode())
    return digest.hexdigest()[:16]


def git_commit(root: Path = PACKAGE) -> str | None:
    """The checkout's HEAD commit, with "+dirty" when tracked files changed; None outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def same_code(equivalence_file: Path | None, version: str | None = None) -> frozenset[str]:
    """`version` (today's by default) and every version linked to it, directly or through
    others, by the pairs of `equivalence_file` ({"pairs": [{"old": v1, "new": v2, ...}]})."""
    version = version or code_version()
    pairs = []
    if equivalence_file is not None and Path(equivalence_file).is_file():
        pairs = json.loads(Path(equivalence_file).read_text()).get("pairs", [])
    linked, frontier = {version}, [version]
    while frontier:
        v = frontier.pop()
        for p in pairs:
            for a, b in ((p["old"], p["new"]), (p["new"], p["old"])):
                if a == v and b not in linked:
                    linked.add(b)
                    frontier.append(b)
    return frozenset(linked)
