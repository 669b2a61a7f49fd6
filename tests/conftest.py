"""Shared fixtures. Tests run from the repo root so that our `pipeline`/`kernels` packages win."""
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
