"""The layering, read from the source (ast, nothing imported): the model library never imports
the service, the load tests, the CLI or Ray, and the service's modules form no import circle."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path, package: str) -> set[str]:
    """Absolute names of the modules a file imports (relative imports resolved), at any depth."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}  # `from . import x` names a module
    return out


def test_the_model_library_imports_no_service_loadtests_cli_or_ray():
    banned = ("service", "loadtests", "dihs_cli", "ray")
    files = sorted((ROOT / "dihs_model").rglob("*.py"))
    assert len(files) > 10
    found = {
        f"{p.relative_to(ROOT)}: {name}"
        for p in files
        for name in _imports(p, ".".join(p.relative_to(ROOT).parent.parts))
        if name.split(".")[0] in banned
    }
    assert not found, sorted(found)


def test_the_scan_sees_relative_and_nested_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    import ray.serve\n    from ..service import app\nfrom .x import y\n")
    assert {"ray.serve", "service", "service.app", "pkg.x", "pkg.x.y"} <= _imports(f, "pkg")


def _service_graph() -> dict[str, set[str]]:
    mods = {p.stem: p for p in (ROOT / "service").glob("*.py") if p.stem != "__init__"}
    return {
        m: {
            n.split(".")[1]
            for n in _imports(p, "service")
            if n.startswith("service.") and n.split(".")[1] in mods
        }
        - {m}
        for m, p in mods.items()
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m, path):
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n) :] + [n]
            if n not in state and (c := visit(n, path + [n])):
                return c
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m, [m])):
            return c
    return None


def test_no_import_circle_in_the_service():
    graph = _service_graph()
    assert {"app", "engine", "batcher", "http", "routes_v1", "routes_v2", "routes_ops"} <= set(graph)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_circle_check_can_fail():
    assert _cycle({"http": {"engine"}, "engine": {"http"}, "app": {"http"}}) == ["http", "engine", "http"]
    assert _cycle({"http": {"engine"}, "engine": set(), "app": {"http", "engine"}}) is None
