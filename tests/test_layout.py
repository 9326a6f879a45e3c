"""The layout is the architecture: no import cycles, and the pure core imports without torch."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ibtpo"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path) -> set[str]:
    """ibtpo modules imported at module level (imports inside functions are deferred on purpose)."""
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ibtpo"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("ibtpo")}
    return out


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in top_level_imports(p) if m in modules} - {name}
            for name, p in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(node, stack):
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep, stack + [dep])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def test_find_cycle_on_hand_built_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_package_has_no_import_cycles():
    graph = import_graph()
    assert "ibtpo.core.tree" in graph and "ibtpo.training.trainer" in graph
    assert find_cycle(graph) is None


def test_core_never_imports_the_layers_above_it():
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("ibtpo.core"):
            assert all(d.startswith("ibtpo.core") for d in deps), (name, deps)


def test_pure_core_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import ibtpo.core.tree, ibtpo.core.ib_score, ibtpo.core.branching, "
            "ibtpo.core.advantages, ibtpo.metrics\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
