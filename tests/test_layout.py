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


def test_every_stage_has_help():
    import subprocess
    import sys

    for stage in sorted((ROOT / "stages").glob("[a-z]*.py")):
        r = subprocess.run([sys.executable, "-m", f"stages.{stage.stem}", "--help"], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0 and "usage" in r.stdout.lower(), stage.name
