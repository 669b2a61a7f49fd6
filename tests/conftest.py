"""Shared fixtures. Tests run from the repo root so that our `pipeline`/`kernels` packages win."""
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

needs_shared_arc = pytest.mark.skipif(not ARC.is_dir(), reason="../shared/arc is absent (CI always has it)")
needs_fixture = pytest.mark.skipif(not FIXTURE.is_dir(), reason="../shared/fixtures/trm_official_tiny is absent")


@pytest.fixture(scope="session")
def demo_pretrained(tmp_path_factory) -> Path:
    """The demo config pretrained in full (a few CPU minutes), shared by the slow learning and TTT tests."""
    run_dir = tmp_path_factory.mktemp("demo_pretrained")
    r = subprocess.run([sys.executable, "-m", "stages.pretrain", "--config", "configs/demo_cpu.yaml", "--set",
                        f"run_dir={run_dir}", "train.progress=false"], cwd=ROOT, capture_output=True, text=True,
                       timeout=1800, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir
