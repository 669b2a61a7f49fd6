"""How `make test` runs the suite under pytest-xdist (tests/conftest.py), checked on a small suite of its own run
with 2 workers: one thread per worker and for the processes it starts, a session fixture built once for both
workers (`built_once`), and an `alone` test with no other test running beside it."""
import json
import os
import shutil
import subprocess
import sys

from conftest import ROOT

SPY_SUITE = '''
import json, os, subprocess, sys, time
import pytest
import torch

from conftest import built_once


def log(what, t0=None):
    with open(os.environ["SPY_LOG"], "a") as f:
        f.write(json.dumps([what, os.environ["PYTEST_XDIST_WORKER"], t0 or time.time(), time.time()]) + "\\n")


def build(folder):
    log("build")
    time.sleep(1.0)
    (folder / "built").write_text("yes")


@pytest.fixture(scope="session")
def expensive(tmp_path_factory):
    return built_once(tmp_path_factory, "expensive", build)


@pytest.mark.parametrize("k", range(6))
def test_uses_the_session_fixture(expensive, k):
    assert (expensive / "built").read_text() == "yes"
    log("used")


@pytest.mark.parametrize("k", [pytest.param(k, marks=pytest.mark.alone) if k % 5 == 0 else k for k in range(10)])
def test_timed(k):  # 0 and 5 alone, among the others in the order they are handed out
    t0 = time.time()
    time.sleep(2.0 if k % 5 == 0 else 0.4)
    log("alone" if k % 5 == 0 else "shared", t0)


def test_one_thread_here_and_in_what_it_starts():
    child = subprocess.run([sys.executable, "-c", "import os; print(os.environ['OMP_NUM_THREADS'])"],
                           capture_output=True, text=True)
    log(f"threads {torch.get_num_threads()} {child.stdout.strip()}")
'''


def test_the_suite_runs_on_two_workers_as_conftest_says(tmp_path):
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_spy.py").write_text(SPY_SUITE)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    alone: see conftest\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") and k != "OMP_NUM_THREADS"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider",
                        "--basetemp", str(tmp_path / "base"), "test_spy.py"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, env={**env, "SPY_LOG": str(tmp_path / "log.jsonl")})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert {w for _, w, _, _ in rows} == {"gw0", "gw1"}  # both workers ran tests
    assert len([w for what, w, _, _ in rows if what == "build"]) == 1  # once ...
    assert {w for what, w, _, _ in rows if what == "used"} == {"gw0", "gw1"}  # ... for both workers
    assert [what for what, *_ in rows if what.startswith("threads")] == ["threads 1 1"]
    timed = [(what, s, e) for what, _, s, e in rows if what in ("alone", "shared")]
    overlaps = [(a, b) for a in timed if a[0] == "alone" for b in timed if b is not a and b[1] < a[2] and a[1] < b[2]]
    assert len(timed) == 10 and not overlaps, overlaps
