"""The dependency rule: stages -> pipeline/submission -> kernels, never back; kernels import no torch."""
import ast
from pathlib import Path

import pytest

from conftest import ROOT


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package, forbidden", [
    ("kernels", {"torch", "pipeline", "submission", "stages", "bench"}),
    ("pipeline", {"stages", "bench"}),
    ("submission", {"stages", "bench", "torch"}),
])
def test_dependencies_point_one_way(package, forbidden):
    for f in (ROOT / package).rglob("*.py"):
        bad = imports(f) & forbidden
        assert not bad, f"{f.relative_to(ROOT)} imports {bad}"


def _package_of(module: str) -> str | None:
    """The package-level node of a module: kernels, submission, each pipeline subpackage, each top-level pipeline
    module (pipeline.config, pipeline.layout, ...); None outside the library."""
    parts = module.split(".")
    if parts[0] in ("kernels", "submission"):
        return parts[0]
    return ".".join(parts[:2]) if parts[0] == "pipeline" and len(parts) > 1 else None


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for package in ("kernels", "submission", "pipeline"):
        for f in (ROOT / package).rglob("*.py"):
            node = _package_of(".".join(f.relative_to(ROOT).with_suffix("").parts))
            if node is None:
                continue
            graph.setdefault(node, set())
            for stmt in ast.walk(ast.parse(f.read_text())):
                if isinstance(stmt, ast.Import):
                    names = [a.name for a in stmt.names]
                elif isinstance(stmt, ast.ImportFrom) and stmt.module and stmt.level == 0:
                    names = [stmt.module]
                else:
                    continue
                graph[node] |= {d for d in map(_package_of, names) if d not in (None, node)}
    return graph


def test_packages_form_few_layers_without_a_cycle():
    """pipeline/'s subpackages follow a task's path (data -> nn -> prediction -> training -> submit): at most 8
    package layers, and no package imports one that imports it back (e.g. data never imports training)."""
    graph = package_graph()
    depth: dict[str, int] = {}

    def layer(node: str, path: tuple[str, ...] = ()) -> int:
        assert node not in path, "package import cycle: " + " -> ".join(path + (node,))
        if node not in depth:
            depth[node] = 1 + max((layer(d, path + (node,)) for d in graph.get(node, ())), default=0)
        return depth[node]

    assert max(layer(n) for n in graph) <= 8, sorted(depth.items(), key=lambda x: -x[1])


MAX_MODULE_LAYERS = 8
"""The longest import chain among the library's modules (issue 20: "layers <= 8"); it must not grow."""


def module_graph() -> dict[str, set[str]]:
    """Module -> the library modules it imports (kernels, pipeline, submission; a package is its __init__, and
    `from pipeline import layout` imports pipeline.layout)."""
    files = {".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): f
             for package in ("kernels", "submission", "pipeline") for f in (ROOT / package).rglob("*.py")}
    graph = {}
    for module, f in files.items():
        names = set()
        for stmt in ast.walk(ast.parse(f.read_text())):
            if isinstance(stmt, ast.Import):
                names |= {a.name for a in stmt.names}
            elif isinstance(stmt, ast.ImportFrom) and stmt.module and stmt.level == 0:
                names |= {stmt.module} | {f"{stmt.module}.{a.name}" for a in stmt.names}
        graph[module] = {n for n in names if n in files and n != module}
    return graph


def longest_chain(graph: dict[str, set[str]]) -> list[str]:
    chains: dict[str, list[str]] = {}

    def chain(node: str, path: tuple[str, ...] = ()) -> list[str]:
        assert node not in path, "module import cycle: " + " -> ".join(path + (node,))
        if node not in chains:
            chains[node] = [node, *max((chain(d, path + (node,)) for d in sorted(graph[node])), key=len, default=[])]
        return chains[node]

    return max((chain(n) for n in sorted(graph)), key=len)


def test_modules_form_few_layers():
    """The longest import chain of library modules (today pipeline.submit.submit_flow -> ... -> kernels) has at most
    MAX_MODULE_LAYERS modules: a new import that deepens it fails here (cut a dependency instead)."""
    chain = longest_chain(module_graph())
    assert len(chain) <= MAX_MODULE_LAYERS, " -> ".join(chain)


def test_every_stage_has_help():
    import subprocess
    import sys

    for stage in sorted((ROOT / "stages").glob("[a-z]*.py")):
        r = subprocess.run([sys.executable, "-m", f"stages.{stage.stem}", "--help"], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0 and "usage" in r.stdout.lower(), stage.name
