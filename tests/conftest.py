"""Shared fixtures. Tests run from the repo root so that our `pipeline`/`kernels` packages win.

Tests that read `../shared` (ARC data, the official fixtures) carry `needs_shared(path)`: in a developer's loop a
missing path skips them; in CI (`CI=true`, which .ci/run exports) it fails them, so a CI without `../shared` can
never pass having tested none of the official-equality claims."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
ARC = SHARED / "arc"
FIXTURE = SHARED / "fixtures" / "trm_official_tiny"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def needs_shared(path: Path):
    """Mark a test that reads `path` under ../shared (see the module docstring)."""
    return pytest.mark.needs_shared(path=path)


needs_shared_arc = needs_shared(ARC)
needs_fixture = needs_shared(FIXTURE)


def pytest_runtest_setup(item):
    for mark in item.iter_markers("needs_shared"):
        path = mark.kwargs["path"]
        if not path.exists():
            if IN_CI:
                pytest.fail(f"{path} is absent: CI (CI=true) must run with ../shared beside the checkout", pytrace=False)
            pytest.skip(f"{path} is absent (CI fails here instead)")


@pytest.fixture(scope="session")
def demo_pretrained(tmp_path_factory) -> Path:
    """The demo config pretrained in full (a few CPU minutes), shared by the slow learning and TTT tests."""
    run_dir = tmp_path_factory.mktemp("demo_pretrained")
    r = subprocess.run([sys.executable, "-m", "stages.pretrain", "--config", "configs/demo_cpu.yaml", "--set",
                        f"run_dir={run_dir}", "train.progress=false"], cwd=ROOT, capture_output=True, text=True,
                       timeout=1800, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir
