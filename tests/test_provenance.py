"""ibtpo.provenance: the code version of a run and the versions linked to it as computing the
same numbers (benchmarks/equivalence.py writes the links)."""

import json

from ibtpo.provenance import NUMERIC, code_version, same_code


def test_code_version_ignores_docstrings_and_layout_but_not_code(tmp_path):
    for name in NUMERIC:  # a package tree of empty numeric modules, and one with code
        (tmp_path / name).mkdir() if not name.endswith(".py") else (
            (tmp_path / name).write_text("x = 1\n"))
    (tmp_path / "core" / "a.py").write_text('"""Doc."""\ndef f():\n    """Doc."""\n    return 1\n')
    before = code_version.__wrapped__(tmp_path)
    (tmp_path / "core" / "a.py").write_text('"""Other doc."""\n\ndef f():\n    return (1)\n')
    assert code_version.__wrapped__(tmp_path) == before  # docstrings, blank lines, brackets
    (tmp_path / "core" / "a.py").write_text("def f():\n    return 2\n")
    assert code_version.__wrapped__(tmp_path) != before


def test_same_code_follows_links_in_either_direction(tmp_path):
    path = tmp_path / "equivalent.json"
    assert same_code(None, "v3") == {"v3"}
    assert same_code(path, "v3") == {"v3"}  # no file yet: only today's version
    path.write_text(json.dumps({"pairs": [{"old": "v1", "new": "v2"}, {"old": "v2", "new": "v3"},
                                          {"old": "x1", "new": "x2"}]}))
    assert same_code(path, "v3") == {"v1", "v2", "v3"}  # v1 = v2 = v3, transitively
    assert same_code(path, "v1") == {"v1", "v2", "v3"}
    assert same_code(path, "x2") == {"x1", "x2"}  # another chain is not mixed in
    assert same_code(path) >= {code_version()}
