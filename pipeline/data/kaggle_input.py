"""Finding the hidden test file on Kaggle: `arc-agi_test_challenges.json` under the input root.

Kaggle has mounted the competition in several places over the years, so the known layouts are tried in
order and a recursive search comes last:
- 2025: ROOT/arc-prize-2025/
- 2026: ROOT/competitions/arc-prize-2026-arc-agi-2/
- 2026 without `competitions/` (reported on reruns): ROOT/arc-prize-2026-arc-agi-2/
- else the first match (sorted, shallowest first) anywhere under ROOT.
ROOT defaults to /kaggle/input and is a parameter so tests use fake trees. Imports no torch: the budgeted
submit finds the file and writes its fallback submission before the heavy imports.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.data.tasks import DataError

TEST_FILE = "arc-agi_test_challenges.json"
DEFAULT_ROOT = Path("/kaggle/input")
LAYOUTS = (("2025 layout", "arc-prize-2025"), ("2026 layout", "competitions/arc-prize-2026-arc-agi-2"),
           ("2026 layout without competitions/", "arc-prize-2026-arc-agi-2"))


def find_test_challenges(root: str | Path = DEFAULT_ROOT) -> tuple[Path, str]:
    """(path of the test challenges file, which layout it was found by). DataError when there is none."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Kaggle input root {root} does not exist: is the competition attached as an input "
                        f"(or pass --challenges FILE)?")
    for name, sub in LAYOUTS:
        path = root / sub / TEST_FILE
        if path.is_file():
            return path, name
    found = sorted(root.rglob(TEST_FILE), key=lambda p: (len(p.parts), str(p)))
    found = [p for p in found if p.is_file()]
    if found:
        return found[0], "recursive search" + (f" ({len(found)} found, took the shallowest)" if len(found) > 1 else "")
    raise DataError(f"no {TEST_FILE} under {root} (looked in "
                    + ", ".join(str(root / sub) for _, sub in LAYOUTS)
                    + " and every folder below): attach the competition's data, or pass --challenges FILE")


def count_inputs(raw: dict) -> tuple[int, int]:
    """(tasks, test inputs) of a raw challenges object, broken entries included (each needs an answer)."""
    inputs = sum(len(t["test"]) for t in raw.values() if isinstance(t, dict) and isinstance(t.get("test"), list))
    return len(raw), inputs
