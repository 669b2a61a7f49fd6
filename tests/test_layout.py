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


MAX_MODULE_LAYERS = 10
"""The longest import chain among the library's modules (issue 20: "layers <= 8"); it must not grow. 10 since
issue 29: the checkpoint loader builds any architecture through the registry (nn.arch -> nn.hrm etc. -> nn.model),
two layers above TRM's module that no import can skip (each variant subclasses TRM)."""


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


PACKAGE_LAYERS = [  # lowest first, as README's "How it works" describes them
    ("kernels",),
    ("pipeline.config", "pipeline.computation", "pipeline.runtime"),  # what every folder uses
    ("pipeline.layout",),  # file names and Checkpoint: torch-free, above config only
    ("pipeline.data",),
    ("pipeline.nn",),
    ("pipeline.checkpoint", "pipeline.overlap", "submission"),  # read checkpoints' contents, tasks, grids
    ("pipeline.prediction",),
    ("pipeline.training",),
    ("pipeline.submit",),
]


def test_packages_import_only_the_layers_below_them():
    """A package imports only packages of lower layers (kernels < config < layout < data < nn < checkpoint <
    prediction < training < submit); a new package must be given its place here and in README."""
    layer = {p: k for k, group in enumerate(PACKAGE_LAYERS) for p in group}
    graph = {p: deps for p, deps in package_graph().items() if p != "pipeline.__init__"}
    assert set(graph) == set(layer), "place each package in PACKAGE_LAYERS (and README's How it works)"
    upward = sorted(f"{p} -> {d}" for p, deps in graph.items() for d in deps if layer[d] >= layer[p])
    assert not upward, upward


def test_the_torch_free_modules_import_no_torch():
    """Config, layout, the budget arithmetic and the Kaggle packager run where torch is not installed (or not
    yet imported: a CLI's --help, the packager): importing them in a fresh interpreter leaves torch out."""
    import subprocess
    import sys

    code = ("import sys, pipeline.config, pipeline.layout, pipeline.submit.budget, submission.kaggle; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout
