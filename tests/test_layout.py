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


def test_every_stage_has_help():
    import subprocess
    import sys

    for stage in sorted((ROOT / "stages").glob("[a-z]*.py")):
        r = subprocess.run([sys.executable, "-m", f"stages.{stage.stem}", "--help"], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0 and "usage" in r.stdout.lower(), stage.name


def test_a_run_with_leftover_old_and_tmp_folders_resolves_to_its_real_step(tmp_path):
    """What a crash in a save leaves (a `.old` folder moved aside, a `.tmp` one never renamed; both may hold a
    meta.json) is never a checkpoint: the run resolves to its real step, and the leftovers are no checkpoint."""
    from pipeline import layout

    root = layout.ckpt_root(tmp_path)
    real = root / layout.step_name(1)
    for folder in (real, layout.old_folder(real), layout.tmp_folder(root / layout.step_name(2)), root / "step-2"):
        folder.mkdir(parents=True)
        (folder / layout.META).write_text("{}")
    assert layout.resolve_checkpoint(tmp_path) == real
    assert layout.list_checkpoints(root) == [real]
    assert layout.torn_saves(root) == [layout.tmp_folder(root / layout.step_name(2))]
    with pytest.raises(layout.CheckpointError):
        layout.resolve_checkpoint(layout.old_folder(real))
